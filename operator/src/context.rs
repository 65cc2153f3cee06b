//! What every reconcile of both controllers shares: the API client and
//! Event recorder, the operator's metrics, the node client, the keygens in
//! flight, the SigningRequest controller's memory and the node registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::runtime::events::Recorder;
use kube::{Client, ResourceExt};
use torcus_crds::MpcCluster;

use crate::keygen::Keygens;
use crate::metrics::Metrics;
use crate::node_client::NodeClient;
use crate::registry::NodeRegistry;
use crate::resources::BuildContext;
use crate::signing_state::SigningState;

/// What every reconciliation shares.
#[derive(Clone)]
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Defaults for the children.
    pub build: BuildContext,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per cluster (namespace/name), for backoff.
    pub failures: Arc<std::sync::Mutex<BTreeMap<String, u32>>>,
    /// Client of the nodes' API.
    pub nodes: NodeClient,
    /// Key generations in flight.
    pub keygens: Arc<Keygens>,
    /// The SigningRequest controller's memory.
    pub signing: Arc<SigningState>,
    /// Nodes' registrations and heartbeats.
    pub registry: Arc<NodeRegistry>,
    /// Per MpcCluster uid and key, the parties whose node answered without
    /// a share of it (a volume lost or replaced), as the last reconcile of
    /// the cluster found: no signer set includes them.
    pub shares_lost: Arc<std::sync::Mutex<BTreeMap<String, SharesLost>>>,
    /// Ways a test makes this operator misbehave (test builds only).
    #[cfg(feature = "test-hooks")]
    pub test_hooks: crate::test_hooks::TestHooks,
}

/// Per key name, the parties whose node holds no share of it.
pub type SharesLost = BTreeMap<String, Vec<u16>>;

impl Context {
    /// A context with empty memory.
    pub fn new(
        client: Client,
        recorder: Recorder,
        build: BuildContext,
        metrics: Arc<Metrics>,
        registry: Arc<NodeRegistry>,
    ) -> Self {
        Self {
            registry,
            client,
            recorder,
            build,
            metrics,
            failures: Arc::default(),
            shares_lost: Arc::default(),
            nodes: NodeClient::new(),
            keygens: Arc::default(),
            signing: Arc::default(),
            #[cfg(feature = "test-hooks")]
            test_hooks: Default::default(),
        }
    }

    /// Parties of `mpc` whose node holds no share of `key`, as last found.
    pub fn shares_lost(&self, mpc: &MpcCluster, key: &str) -> Vec<u16> {
        let lost = self.shares_lost.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        lost.get(&mpc.uid().unwrap_or_default()).and_then(|keys| keys.get(key)).cloned().unwrap_or_default()
    }

    /// Party indices of `mpc` that registered and then went silent.
    pub fn offline_nodes(&self, mpc: &MpcCluster) -> Vec<u16> {
        let ns = mpc.namespace().unwrap_or_default();
        self.registry.nodes(&ns, &mpc.name_any()).into_iter().filter(|n| !n.online).map(|n| n.party).collect()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("build", &self.build).finish_non_exhaustive()
    }
}
