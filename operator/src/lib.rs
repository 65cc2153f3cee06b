//! The Torcus operator: turns `MpcCluster` objects into running signing
//! clusters (certificates, grant key, configuration, Service, StatefulSets,
//! PodDisruptionBudget) and reports their state.
//!
//! `main` only parses [`Args`] and calls [`Args::run`]; tests call
//! [`Args::run`] directly with their own client and shutdown signal.

pub mod apiserver;
pub mod cli;
pub mod cluster_controller;
pub mod cluster_plan;
pub mod context;
pub mod crypto;
mod error;
pub mod grants;
pub mod keygen;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod node_client;
pub mod node_keys;
pub mod pki;
pub mod policy;
pub mod presignatures;
pub mod registry;
pub mod relay;
pub mod resources;
pub mod rollout;
mod run;
pub mod secret_records;
pub mod signers;
pub mod signing_controller;
pub mod signing_state;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;

pub use cli::Args;
pub use error::{Error, Result};
pub use leader::LEADER_LABEL;
pub use metrics::Metrics;
pub use run::{RunError, SHUTDOWN_GRACE};
