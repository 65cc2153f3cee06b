//! The operator's side of the node HTTP API (`torcus_contract::api`): start
//! key generation and signing sessions on an initiator, read a session's
//! state and the keys a node holds.
//!
//! Calls carry a signed grant, which is their authentication; the node
//! verifies it before anything else.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use torcus_contract::SignedGrant;
use torcus_contract::api::{
    self, ErrorBody, GrantRequest, KeyInfo, Outcome, PresignatureChoice, PresignaturePools, SessionStatus,
};

/// Longest a key generation (aux info included) may take end to end.
pub const KEYGEN_CALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Longest a signing session may take end to end (the node's own limits
/// are shorter; this only bounds a hung connection).
pub const SIGN_CALL_TIMEOUT: Duration = Duration::from_secs(90);
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
    /// The participant the node holds responsible for a failed session.
    pub fn blamed(&self) -> Option<u16> {
        match self {
            Self::Refused { body, .. } => body.blamed,
            _ => None,
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

/// Client for the node API.
#[derive(Clone, Debug)]
pub struct NodeClient {
    http: reqwest::Client,
}

impl Default for NodeClient {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeClient {
    /// A client with connect timeouts and no proxy: nodes are inside the
    /// cluster, and protocol traffic must not go to an outside proxy.
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .no_proxy()
            .build()
            // Only fails when the TLS backend cannot start; plain HTTP with
            // rustls and no roots to load always can.
            .expect("the HTTP client builds");
        Self { http }
    }

    /// Runs key generation with `grant` on its initiator at `base`.
    pub async fn keygen(&self, base: &str, grant: &SignedGrant) -> Result<Outcome, CallError> {
        let body = GrantRequest { grant: grant.clone(), presignature: PresignatureChoice::Any };
        self.post(base, api::KEYGEN_PATH, &body, KEYGEN_CALL_TIMEOUT).await
    }

    /// Runs the signing session of `grant` on its initiator at `base`;
    /// returns the outcome and how long the call took.
    pub async fn sign(
        &self,
        base: &str,
        grant: &SignedGrant,
        presignature: PresignatureChoice,
    ) -> Result<(Outcome, Duration), CallError> {
        let started = Instant::now();
        let body = GrantRequest { grant: grant.clone(), presignature };
        let outcome = self.post(base, api::SIGN_PATH, &body, SIGN_CALL_TIMEOUT).await?;
        Ok((outcome, started.elapsed()))
    }

    /// The state of a session the node at `base` has seen; `None` when it
    /// has not seen it (or has restarted since).
    pub async fn session(&self, base: &str, session_id: &[u8; 32]) -> Result<Option<SessionStatus>, CallError> {
        match self.get(base, &api::session_path(session_id)).await {
            Ok(status) => Ok(Some(status)),
            Err(CallError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the node at `base` answers its readiness check within `timeout`.
    pub async fn healthy(&self, base: &str, timeout: Duration) -> bool {
        let url = format!("{}/readyz", base.trim_end_matches('/'));
        matches!(self.http.get(url).timeout(timeout).send().await, Ok(r) if r.status().is_success())
    }

    /// The presignature pools of the node at `base`.
    pub async fn presignatures(&self, base: &str) -> Result<PresignaturePools, CallError> {
        self.get(base, api::PRESIGNATURES_PATH).await
    }

    /// The keys the node at `base` holds.
    pub async fn keys(&self, base: &str) -> Result<Vec<KeyInfo>, CallError> {
        self.get(base, api::KEYS_PATH).await
    }

    /// The id of the aux info the node at `base` holds.
    pub async fn aux_info(&self, base: &str) -> Result<Option<String>, CallError> {
        self.get::<api::AuxInfoId>(base, api::AUX_INFO_PATH).await.map(|a| a.id)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: &GrantRequest,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let response = self.http.post(&url).timeout(timeout).json(body).send().await;
        Self::read(url, response).await
    }

    async fn get<T: DeserializeOwned>(&self, base: &str, path: &str) -> Result<T, CallError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let response = self.http.get(&url).timeout(READ_TIMEOUT).send().await;
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
        });
        Err(CallError::Refused { status: status.as_u16(), body })
    }
}

/// Base URL of a node's API from its pod IP.
pub fn base_url(pod_ip: &str, port: u16) -> String {
    match pod_ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("http://[{ip}]:{port}"),
        _ => format!("http://{pod_ip}:{port}"),
    }
}
