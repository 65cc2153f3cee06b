//! The nodes' side of the HTTP relay, for clusters whose nodes cannot reach
//! each other directly (`http` transport mode, and the fallback of
//! `hybrid`): [`RelayTransport`] posts envelopes to the operator's relay and
//! polls for its own, signing each request with [`RequestSigner`]. The wire
//! format is [`torcus_contract::relay`]; the server is the operator's.
//!
//! Nodes seal every payload they send through the relay end to end for its
//! recipient ([`super::seal`]): the relay, and anyone who can reach it, can
//! neither read a protocol message nor forge one that the recipient opens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

pub use torcus_contract::relay::*;

use super::{SendError, Transport, TransportMetrics, frame};
use crate::engine::Envelope;

/// How long the node's poll asks the relay to wait, below [`MAX_WAIT`].
const POLL_WAIT: Duration = Duration::from_secs(20);
/// Extra time for a poll response beyond the wait itself.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// Pause after a failed poll, doubled up to [`POLL_BACKOFF_MAX`].
const POLL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const POLL_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Tries of one POST when the relay surely did not take it.
const SEND_ATTEMPTS: u32 = 6;
/// Pause before the first retry of a POST, doubled each time (≈ 1.5 s in all).
const SEND_BACKOFF: Duration = Duration::from_millis(50);
/// Time for one POST, connection included.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a node finds the relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// This node's party index.
    pub me: u16,
    /// The cluster, `<namespace>/<cluster>`.
    pub cluster: String,
    /// Base URL of the relay (`https://operator.torcus-system:8443`); the
    /// relay's paths are appended to it.
    pub base_url: String,
    /// Signs every request with the node's key, for a relay that takes
    /// signed requests only (the operator's); `None` sends them unsigned.
    pub signer: Option<Arc<RequestSigner>>,
}

/// Signs a node's relay requests with its TLS key, and names its
/// certificate, both read from the TLS folder again when the files change
/// (the operator renews them in place).
#[derive(Debug)]
pub struct RequestSigner {
    source: SignerSource,
    /// The keys last read, with the files' modification times then.
    cached: Mutex<Option<(FileStamps, Arc<SignerKeys>)>>,
}

type FileStamps = Vec<Option<std::time::SystemTime>>;

#[derive(Debug)]
enum SignerSource {
    TlsDir(std::path::PathBuf),
    Fixed(Arc<SignerKeys>),
}

#[derive(Debug)]
struct SignerKeys {
    key: torcus_certs::SecretPem,
    certificate_hex: String,
}

impl SignerKeys {
    fn new(key: torcus_certs::SecretPem, cert_pem: &str) -> Result<Self, String> {
        use torcus_certs::rustls::pki_types::CertificateDer;
        use torcus_certs::rustls::pki_types::pem::PemObject as _;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| format!("tls.crt: {e}"))?;
        Ok(Self { key, certificate_hex: hex::encode(der.as_ref()) })
    }
}

impl RequestSigner {
    /// Signs with `tls.key` and names `tls.crt` of `dir`.
    pub fn from_tls_dir(dir: std::path::PathBuf) -> Self {
        Self { source: SignerSource::TlsDir(dir), cached: Mutex::default() }
    }

    /// Signs with `key` and names `cert_pem` (its leaf first).
    pub fn fixed(key: torcus_certs::SecretPem, cert_pem: &str) -> Result<Self, String> {
        let keys = Arc::new(SignerKeys::new(key, cert_pem)?);
        Ok(Self { source: SignerSource::Fixed(keys), cached: Mutex::default() })
    }

    fn keys(&self) -> Result<Arc<SignerKeys>, String> {
        let dir = match &self.source {
            SignerSource::Fixed(keys) => return Ok(Arc::clone(keys)),
            SignerSource::TlsDir(dir) => dir,
        };
        let stamp = crate::tls_listener::stamps(dir, &["tls.crt", "tls.key"]);
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, keys)) = cached.as_ref()
            && *at == stamp
        {
            return Ok(Arc::clone(keys));
        }
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{name}: {e}"));
        let keys = Arc::new(SignerKeys::new(torcus_certs::SecretPem::new(read("tls.key")?), &read("tls.crt")?)?);
        *cached = Some((stamp, Arc::clone(&keys)));
        Ok(keys)
    }

    /// The headers that sign a request of `method` with `query` and `body`
    /// from `party` of `cluster`.
    pub fn headers(
        &self,
        method: &str,
        cluster: &str,
        party: u16,
        query: &str,
        body: &[u8],
    ) -> Result<[(&'static str, String); 4], String> {
        let keys = self.keys()?;
        let time = unix_ms();
        let digest = body_digest(body);
        let input = signing_input(method, cluster, party, query, time, &digest);
        let signature = torcus_certs::sign_with_key(&keys.key, &input).map_err(|e| e.to_string())?;
        Ok([
            (TIME_HEADER, time.to_string()),
            (CERTIFICATE_HEADER, keys.certificate_hex.clone()),
            (SIGNATURE_HEADER, hex::encode(signature)),
            (BODY_DIGEST_HEADER, hex::encode(digest)),
        ])
    }
}

/// A node's side of the relay: posts envelopes, and polls for its own in a
/// background task that delivers them to the incoming channel.
#[derive(Debug)]
pub struct RelayTransport {
    me: u16,
    cluster: String,
    signer: Option<Arc<RequestSigner>>,
    messages_url: String,
    client: reqwest::Client,
    /// One lock per recipient, held from the POST until the relay queued
    /// the message: the relay's queue order then is the send order.
    lanes: Mutex<HashMap<u16, Arc<tokio::sync::Mutex<()>>>>,
    metrics: TransportMetrics,
}

/// Outcome of one POST that did not queue the message.
enum Attempt {
    /// The relay surely did not take it: sending again cannot duplicate.
    Retry(String),
    /// Final.
    Fail(SendError),
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("request: {0}")]
    Request(#[from] reqwest::Error),
    #[error("relay answered {0}")]
    Status(reqwest::StatusCode),
    #[error("response exceeds {MAX_POLL_BYTES} bytes")]
    TooLarge,
    #[error("signing the poll: {0}")]
    Sign(String),
}

impl PollError {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Request(e) if e.is_connect() => "connect",
            Self::Request(_) => "poll",
            Self::Status(_) => "refused",
            Self::TooLarge => "poll_too_large",
            Self::Sign(_) => "sign",
        }
    }
}

impl RelayTransport {
    /// Starts polling the relay for `config.me`; received envelopes go to
    /// `incoming` until `shutdown` is cancelled. Plain HTTP or HTTPS with the
    /// default client; see [`RelayTransport::start_with_client`] for mutual TLS.
    pub fn start(
        config: RelayConfig,
        incoming: mpsc::Sender<Envelope>,
        metrics: TransportMetrics,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // The relay is in the cluster; an HTTP(S)_PROXY meant for the
            // outside world must not see protocol traffic.
            .no_proxy()
            .build()
            // Building fails only when the TLS backend cannot start; rustls
            // with ring and no system roots to load always can.
            .expect("the HTTP client builds");
        Self::start_with_client(config, client, incoming, metrics, shutdown)
    }

    /// Like [`RelayTransport::start`] with a client of the caller's, e.g.
    /// one built with `use_preconfigured_tls` from the node's certificate
    /// (`torcus_certs::client_config`) for mutual TLS with the relay.
    pub fn start_with_client(
        config: RelayConfig,
        client: reqwest::Client,
        incoming: mpsc::Sender<Envelope>,
        metrics: TransportMetrics,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let RelayConfig { me, cluster, base_url, signer } = config;
        let this = Arc::new(Self {
            me,
            cluster,
            signer,
            messages_url: format!("{}{MESSAGES_PATH}", base_url.trim_end_matches('/')),
            client,
            lanes: Mutex::default(),
            metrics,
        });
        let span = info_span!("relay_poll", party = me, cluster = %this.cluster);
        tokio::spawn(Arc::clone(&this).poll_loop(incoming, shutdown).instrument(span));
        this
    }

    async fn poll_loop(self: Arc<Self>, incoming: mpsc::Sender<Envelope>, shutdown: CancellationToken) {
        let mut backoff = POLL_BACKOFF_MIN;
        loop {
            let polled = tokio::select! {
                polled = self.poll_once() => polled,
                () = shutdown.cancelled() => return,
            };
            match polled {
                Ok(body) => {
                    backoff = POLL_BACKOFF_MIN;
                    for envelope in self.unpack(&body) {
                        tokio::select! {
                            sent = incoming.send(envelope) => if sent.is_err() { return },
                            () = shutdown.cancelled() => return,
                        }
                    }
                }
                Err(error) => {
                    self.metrics.connection_failures.with_label_values(&[error.metric_label()]).inc();
                    warn!(%error, retry_in = ?backoff, "polling the relay failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(POLL_BACKOFF_MAX);
                }
            }
        }
    }

    /// One long poll; the raw response body.
    async fn poll_once(&self) -> Result<Vec<u8>, PollError> {
        let query = format!("party={}&wait_ms={}", self.me, POLL_WAIT.as_millis());
        let mut request = self
            .client
            .get(format!("{}?{query}", self.messages_url))
            .header(PARTY_HEADER, self.me)
            .header(CLUSTER_HEADER, &self.cluster)
            .timeout(POLL_WAIT + POLL_SLACK);
        if let Some(signer) = &self.signer {
            for (name, value) in signer.headers("GET", &self.cluster, self.me, &query, &[]).map_err(PollError::Sign)? {
                request = request.header(name, value);
            }
        }
        let mut response = request.send().await?;
        if !response.status().is_success() {
            return Err(PollError::Status(response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_POLL_BYTES {
                return Err(PollError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Splits a poll response into envelopes for this node; anything else
    /// is dropped and counted, and a broken framing ends the batch.
    fn unpack(&self, mut body: &[u8]) -> Vec<Envelope> {
        let mut out = Vec::new();
        while !body.is_empty() {
            let Some((len, rest)) = body.split_first_chunk::<4>() else {
                self.metrics.dropped.with_label_values(&["malformed_frame"]).inc();
                break;
            };
            let len = u32::from_be_bytes(*len) as usize;
            if len > frame::MAX_FRAME || len > rest.len() {
                self.metrics.dropped.with_label_values(&["malformed_frame"]).inc();
                warn!(len, "malformed relay response; dropping the rest of it");
                break;
            }
            let (frame_body, rest) = rest.split_at(len);
            body = rest;
            match frame::decode(frame_body) {
                // A broadcast copy keeps `to == None`; the relay queued it for us.
                Ok(envelope) if envelope.to.is_none_or(|to| to == self.me) => {
                    self.metrics.received.inc();
                    out.push(envelope);
                }
                Ok(envelope) => {
                    self.metrics.dropped.with_label_values(&["misrouted"]).inc();
                    warn!(to = ?envelope.to, from = envelope.from, "relay handed over a message for another party");
                }
                Err(error) => {
                    self.metrics.dropped.with_label_values(&["malformed_frame"]).inc();
                    warn!(%error, "malformed envelope from the relay");
                }
            }
        }
        out
    }

    fn lane(&self, to: u16) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.lanes.lock().unwrap_or_else(PoisonError::into_inner).entry(to).or_default())
    }

    async fn post(&self, to: u16, body: Bytes) -> Result<(), Attempt> {
        let len = body.len();
        let failed = |reason: String| SendError::Connection { party: to, reason };
        let query = format!("to={to}");
        let mut request = self
            .client
            .post(format!("{}?{query}", self.messages_url))
            .header(PARTY_HEADER, self.me)
            .header(CLUSTER_HEADER, &self.cluster)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(SEND_TIMEOUT);
        if let Some(signer) = &self.signer {
            // Signed again for every try: the relay refuses a signature it has seen.
            let headers = signer.headers("POST", &self.cluster, self.me, &query, &body);
            for (name, value) in headers.map_err(|e| Attempt::Fail(failed(format!("signing: {e}"))))? {
                request = request.header(name, value);
            }
        }
        let response = request.body(body).send().await;
        let mut response = match response {
            Ok(response) => response,
            Err(error) if error.is_connect() => {
                self.metrics.connection_failures.with_label_values(&["connect"]).inc();
                return Err(Attempt::Retry(error.to_string()));
            }
            Err(error) => {
                // The relay may have queued it before the failure: no retry.
                self.metrics.connection_failures.with_label_values(&["request"]).inc();
                return Err(Attempt::Fail(failed(error.to_string())));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // The reason is a short line; read no more than a little of it.
        let reason = match response.chunk().await {
            Ok(Some(chunk)) => String::from_utf8_lossy(&chunk[..chunk.len().min(256)]).into_owned(),
            _ => String::new(),
        };
        let reason = format!("relay answered {status}: {reason}");
        match status {
            // Not found: an operator that took over and has not yet
            // reconciled this cluster, seconds away from knowing it.
            reqwest::StatusCode::TOO_MANY_REQUESTS
            | reqwest::StatusCode::SERVICE_UNAVAILABLE
            | reqwest::StatusCode::NOT_FOUND => {
                self.metrics.connection_failures.with_label_values(&["relay_busy"]).inc();
                Err(Attempt::Retry(reason))
            }
            reqwest::StatusCode::PAYLOAD_TOO_LARGE => Err(Attempt::Fail(SendError::TooLarge(len))),
            _ => {
                self.metrics.connection_failures.with_label_values(&["refused"]).inc();
                Err(Attempt::Fail(failed(reason)))
            }
        }
    }
}

impl Transport for RelayTransport {
    async fn send(&self, to: u16, envelope: Envelope) -> Result<(), SendError> {
        let body = Bytes::from(frame::encode(&envelope));
        if body.len() > frame::MAX_FRAME {
            return Err(SendError::TooLarge(body.len()));
        }
        let lane = self.lane(to);
        let _turn = lane.lock().await;
        let mut backoff = SEND_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.post(to, body.clone()).await {
                Ok(()) => {
                    self.metrics.sent.inc();
                    return Ok(());
                }
                Err(Attempt::Fail(error)) => return Err(error),
                Err(Attempt::Retry(reason)) if attempt < SEND_ATTEMPTS => {
                    debug!(to, attempt, %reason, "relay post failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(Attempt::Retry(reason)) => return Err(SendError::Connection { party: to, reason }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Registry;

    use super::*;

    #[test]
    fn unpack_drops_misrouted_and_stops_at_broken_framing() {
        let registry = Registry::new();
        let metrics = TransportMetrics::register(&registry, "relay").unwrap();
        let transport = RelayTransport {
            me: 1,
            cluster: "ns/a".into(),
            signer: None,
            messages_url: String::new(),
            client: reqwest::Client::new(),
            lanes: Mutex::default(),
            metrics: metrics.clone(),
        };
        let env = |to: Option<u16>, seq| Envelope { from: 0, to, seq, ..Envelope::default() };
        let mut body = Vec::new();
        for e in [env(Some(1), 0), env(None, 1), env(Some(2), 2)] {
            let frame = frame::encode(&e);
            body.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            body.extend_from_slice(&frame);
        }
        body.extend_from_slice(&1000u32.to_be_bytes());
        body.extend_from_slice(&[0; 10]);
        let got = transport.unpack(&body);
        assert_eq!(got, [env(Some(1), 0), env(None, 1)]);
        assert_eq!(metrics.dropped.with_label_values(&["misrouted"]).get(), 1);
        assert_eq!(metrics.dropped.with_label_values(&["malformed_frame"]).get(), 1);
        assert_eq!(metrics.received.get(), 2);
    }
}
