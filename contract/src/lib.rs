//! What the operator and the nodes agree on, kept in one place so neither
//! side carries a copy: the cluster configuration file the operator publishes
//! in a ConfigMap and every node reads at start-up, and the fixed paths,
//! ports and environment variables that tie a pod's template to the node;
//! the signed grants the operator issues and the nodes verify; how
//! participants are chosen and agree to start a session; and how nodes
//! register and heartbeat with the operator's node registry.

pub mod api;
pub mod config;
pub mod envelope;
#[cfg(feature = "test-util")]
pub mod fuzz_checks;
pub mod grant;
pub mod registry;
pub mod relay;
pub mod seal;
pub mod session;

pub use config::*;
pub use grant::*;
pub use registry::{ClusterStats, Heartbeat, NodeRecord, Registration, RegistryError, RegistryMessage, SignedMessage};
pub use session::*;
