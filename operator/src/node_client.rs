//! The operator's side of the node HTTP API (`torcus_contract::api`): start
//! key generation and signing sessions on an initiator, read a session's
//! state and the keys a node holds.
//!
//! Every call goes over mutual TLS with the cluster's CA: the operator
//! presents the cluster's `<cluster>-operator-client` certificate (nodes
//! serve no one else), and accepts only the certificate of the very party it
//! calls, whatever address the party has. Calls that start sessions also
//! carry a signed grant, which the node verifies before anything else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use torcus_certs::SecretPem;
use torcus_contract::SignedGrant;
use torcus_contract::api::{
    self, ErrorBody, GrantRequest, KeyInfo, Outcome, PresignatureChoice, PresignaturePools, SessionStatus,
};

/// Longest a key generation (aux info included) may take end to end.
pub const KEYGEN_CALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Longest a signing session among `signers` may take end to end: the
/// node's own limit ([`torcus_contract::session::sign_deadline`]) plus
/// time for the handshake and the answer; this only bounds a hung
/// connection.
pub fn sign_call_timeout(signers: usize) -> Duration {
    torcus_contract::session::sign_deadline(signers) + Duration::from_secs(30)
}
/// Longest a read-only call may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to a node did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The node could not be reached, or the connection broke.
    #[error("node at {url} unreachable: {message}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// What failed.
        message: String,
    },
    /// The node answered with an error.
    #[error("node answered {status}: {}", .body.error)]
    Refused {
        /// HTTP status.
        status: u16,
        /// The node's explanation.
        body: ErrorBody,
    },
    /// The node answered something that is not the API's.
    #[error("node answered malformed data: {0}")]
    Malformed(String),
}

/// Largest answer read from a node: a signature, a session's state, the
/// key list or the pools of a node holding the most presignatures it may.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

impl CallError {
    /// The participant the node holds responsible for a failed session,
    /// and who accused it when not the node itself.
    pub fn fault(&self) -> (Option<u16>, Option<u16>) {
        match self {
            Self::Refused { body, .. } => (body.blamed, body.accuser),
            _ => (None, None),
        }
    }

    /// Low-cardinality reason for metrics and conditions.
    pub fn reason(&self) -> String {
        match self {
            Self::Unreachable { .. } => "unreachable".to_owned(),
            Self::Refused { body, .. } => body.reason.clone(),
            Self::Malformed(_) => "malformed_answer".to_owned(),
        }
    }
}

/// One party's API: who it must be, and where it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    /// Namespace of the MpcCluster.
    pub namespace: String,
    /// Name of the MpcCluster.
    pub cluster: String,
    /// Party index; the certificate the node presents must name it.
    pub party: u16,
    /// Base URL (`https://<pod IP>:<port>`).
    pub url: String,
}

impl NodeAddr {
    /// Party `party` of `namespace/cluster`, at `pod_ip:port`.
    pub fn new(namespace: &str, cluster: &str, party: u16, pod_ip: &str, port: u16) -> Self {
        let url = match pod_ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => format!("https://[{ip}]:{port}"),
            _ => format!("https://{pod_ip}:{port}"),
        };
        Self { namespace: namespace.to_owned(), cluster: cluster.to_owned(), party, url }
    }

    fn cluster_key(&self) -> (String, String) {
        (self.namespace.clone(), self.cluster.clone())
    }
}

/// What the operator authenticates with to one cluster's nodes.
struct ClusterTls {
    /// Digest of the trust bundle and the client certificate: a change
    /// (a renewal, a CA roll) replaces the clients.
    fingerprint: [u8; 32],
    bundle: String,
    cert_pem: String,
    key: SecretPem,
    /// One client per party, each accepting only that party's certificate.
    clients: HashMap<u16, reqwest::Client>,
}

/// Client for the node API.
#[derive(Clone, Default)]
pub struct NodeClient {
    clusters: Arc<Mutex<HashMap<(String, String), ClusterTls>>>,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient").finish_non_exhaustive()
    }
}

impl NodeClient {
    /// A client that knows no cluster yet: see [`NodeClient::trust`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls to the nodes of `namespace/cluster` trust `bundle_pem` and
    /// present `cert_pem` with `key` (the cluster's operator certificate).
    pub fn trust(&self, namespace: &str, cluster: &str, bundle_pem: &str, cert_pem: &str, key: &SecretPem) {
        use sha2::Digest;
        let mut digest = sha2::Sha256::new();
        for part in [bundle_pem, cert_pem] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part.as_bytes());
        }
        let fingerprint: [u8; 32] = digest.finalize().into();
        let mut clusters = self.lock();
        let key_pair = (namespace.to_owned(), cluster.to_owned());
        if clusters.get(&key_pair).is_some_and(|c| c.fingerprint == fingerprint) {
            return;
        }
        let tls = ClusterTls {
            fingerprint,
            bundle: bundle_pem.to_owned(),
            cert_pem: cert_pem.to_owned(),
            key: key.clone(),
            clients: HashMap::new(),
        };
        clusters.insert(key_pair, tls);
    }

    /// The trust bundle of `namespace/cluster` as the operator last issued
    /// it; `None` for a cluster it does not manage.
    pub fn trust_bundle(&self, namespace: &str, cluster: &str) -> Option<String> {
        self.lock().get(&(namespace.to_owned(), cluster.to_owned())).map(|tls| tls.bundle.clone())
    }

    /// Forgets a deleted cluster's credentials.
    pub fn forget(&self, namespace: &str, cluster: &str) {
        self.lock().remove(&(namespace.to_owned(), cluster.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), ClusterTls>> {
        self.clusters.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The HTTPS client for `node`: the cluster's operator certificate, and
    /// only the party's own certificate accepted. No proxy: nodes are inside
    /// the cluster, and protocol traffic must not leave it.
    fn http(&self, node: &NodeAddr) -> Result<reqwest::Client, CallError> {
        let unreachable = |message: String| CallError::Unreachable { url: node.url.clone(), message };
        let mut clusters = self.lock();
        let Some(tls) = clusters.get_mut(&node.cluster_key()) else {
            return Err(unreachable("no certificate for this cluster yet".to_owned()));
        };
        if let Some(client) = tls.clients.get(&node.party) {
            return Ok(client.clone());
        }
        let expected = torcus_certs::Identity {
            namespace: node.namespace.clone(),
            cluster: node.cluster.clone(),
            role: torcus_certs::Role::Node { party_index: node.party },
        };
        let config = torcus_certs::client_config_for(&tls.cert_pem, &tls.key, &tls.bundle, &expected, &[b"http/1.1"])
            .map_err(|e| unreachable(format!("operator certificate unusable: {e}")))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*config).clone())
            .connect_timeout(Duration::from_secs(3))
            .no_proxy()
            .build()
            .map_err(|e| unreachable(format!("HTTPS client: {e}")))?;
        tls.clients.insert(node.party, client.clone());
        Ok(client)
    }

    /// Runs key generation with `grant` on its initiator at `base`.
    pub async fn keygen(&self, base: &NodeAddr, grant: &SignedGrant) -> Result<Outcome, CallError> {
        let body = GrantRequest { grant: grant.clone(), presignature: PresignatureChoice::Any };
        self.post(base, api::KEYGEN_PATH, &body, KEYGEN_CALL_TIMEOUT).await
    }

    /// Runs the signing session of `grant` on its initiator at `base`;
    /// returns the outcome and how long the call took.
    pub async fn sign(
        &self,
        base: &NodeAddr,
        grant: &SignedGrant,
        presignature: PresignatureChoice,
    ) -> Result<(Outcome, Duration), CallError> {
        let started = Instant::now();
        let body = GrantRequest { grant: grant.clone(), presignature };
        let timeout = sign_call_timeout(grant.grant.participants.len());
        let outcome = self.post(base, api::SIGN_PATH, &body, timeout).await?;
        Ok((outcome, started.elapsed()))
    }

    /// The state of a session the node at `base` has seen; `None` when it
    /// has not seen it (or has restarted since).
    pub async fn session(&self, base: &NodeAddr, session_id: &[u8; 32]) -> Result<Option<SessionStatus>, CallError> {
        match self.get(base, &api::session_path(session_id)).await {
            Ok(status) => Ok(Some(status)),
            Err(CallError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the node at `base` answers its readiness check within `timeout`.
    pub async fn healthy(&self, base: &NodeAddr, timeout: Duration) -> bool {
        let Ok(http) = self.http(base) else { return false };
        let url = format!("{}/readyz", base.url.trim_end_matches('/'));
        matches!(http.get(url).timeout(timeout).send().await, Ok(r) if r.status().is_success())
    }

    /// The presignature pools of the node at `base`.
    pub async fn presignatures(&self, base: &NodeAddr) -> Result<PresignaturePools, CallError> {
        self.get(base, api::PRESIGNATURES_PATH).await
    }

    /// The keys the node at `base` holds.
    pub async fn keys(&self, base: &NodeAddr) -> Result<Vec<KeyInfo>, CallError> {
        self.get(base, api::KEYS_PATH).await
    }

    /// The id of the aux info the node at `base` holds.
    pub async fn aux_info(&self, base: &NodeAddr) -> Result<Option<String>, CallError> {
        self.get::<api::AuxInfoId>(base, api::AUX_INFO_PATH).await.map(|a| a.id)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        base: &NodeAddr,
        path: &str,
        body: &GrantRequest,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let http = self.http(base)?;
        let url = format!("{}{path}", base.url.trim_end_matches('/'));
        let response = http.post(&url).timeout(timeout).json(body).send().await;
        Self::read(url, response).await
    }

    async fn get<T: DeserializeOwned>(&self, base: &NodeAddr, path: &str) -> Result<T, CallError> {
        let http = self.http(base)?;
        let url = format!("{}{path}", base.url.trim_end_matches('/'));
        let response = http.get(&url).timeout(READ_TIMEOUT).send().await;
        Self::read(url, response).await
    }

    async fn read<T: DeserializeOwned>(
        url: String,
        response: reqwest::Result<reqwest::Response>,
    ) -> Result<T, CallError> {
        let unreachable =
            |url: &str, e: reqwest::Error| CallError::Unreachable { url: url.to_owned(), message: e.to_string() };
        let mut response = response.map_err(|e| unreachable(&url, e))?;
        let status = response.status();
        // A node's answer is read up to a bound, whatever it claims or sends.
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(&url, e))? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(CallError::Malformed(format!("answer from {url} is larger than {MAX_ANSWER_BYTES} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| CallError::Malformed(e.to_string()));
        }
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
            error: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            reason: format!("http_{}", status.as_u16()),
            initiator: None,
            blamed: None,
            accuser: None,
        });
        Err(CallError::Refused { status: status.as_u16(), body })
    }
}
