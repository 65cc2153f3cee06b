//! The node's side of the operator's node registry: register once, then heartbeat, each
//! message signed with the node's TLS key (see [`torcus_contract::registry`]).
//!
//! The registry is plain HTTP inside the cluster; the signature and the certificate sent
//! with it are what authenticate the node. The certificate and key are read from the TLS
//! folder before each signing, since the operator rotates them in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use torcus_certs::SecretPem;
use torcus_contract::registry::{self, HEARTBEAT_PATH, HeldKey, REGISTER_PATH};
use torcus_contract::{Heartbeat, NodeRecord, Registration, RegistryError, RegistryMessage, SignedMessage};
use tracing::{Instrument, debug, info, info_span, warn};

/// Time to open a connection to the operator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for a whole request, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from the registry.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// First wait before registering again after a failure; doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between registration attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A client of the operator's registry, for one node.
#[derive(Debug)]
pub struct RegistryClient {
    /// Base URL without a trailing slash.
    base_url: String,
    namespace: String,
    cluster: String,
    party: u16,
    credentials: Credentials,
    http: reqwest::Client,
}

/// Where the signing key and certificate come from.
#[derive(Debug)]
enum Credentials {
    /// `tls.crt` and `tls.key` in this folder, read for every message.
    TlsDir(PathBuf),
    /// Fixed PEM, for tests and callers that reload themselves.
    Fixed { key: SecretPem, cert_pem: String },
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryClientError {
    /// The certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The key could not sign (not an ECDSA P-256 key, malformed PEM).
    #[error("signing: {0}")]
    Sign(#[from] torcus_certs::Error),
    /// The HTTP client could not be built, or the request failed (connection, timeout).
    #[error("request: {0}")]
    Request(#[from] reqwest::Error),
    /// The operator does not know this node (it restarted): register again.
    #[error("the registry does not know this node")]
    NotRegistered,
    /// The operator refused the request.
    #[error("registry answered {status}: {reason}: {error}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Low-cardinality reason, e.g. `stale` or `bad_signature`.
        reason: String,
        /// The operator's explanation.
        error: String,
    },
    /// The answer is not what the registry sends.
    #[error("unexpected answer: {0}")]
    Response(String),
}

impl RegistryClient {
    /// A client for party `party` of `namespace/cluster` at `base_url` (the configuration's
    /// `registryUrl`) that signs with `tls_dir/tls.key` and sends `tls_dir/tls.crt`, read
    /// again for every message.
    pub fn from_tls_dir(
        base_url: &str,
        namespace: &str,
        cluster: &str,
        party: u16,
        tls_dir: PathBuf,
    ) -> Result<Self, RegistryClientError> {
        Self::build(base_url, namespace, cluster, party, Credentials::TlsDir(tls_dir))
    }

    /// Like [`RegistryClient::from_tls_dir`] with a fixed key and certificate.
    pub fn new(
        base_url: &str,
        namespace: &str,
        cluster: &str,
        party: u16,
        key: SecretPem,
        cert_pem: String,
    ) -> Result<Self, RegistryClientError> {
        Self::build(base_url, namespace, cluster, party, Credentials::Fixed { key, cert_pem })
    }

    fn build(
        base_url: &str,
        namespace: &str,
        cluster: &str,
        party: u16,
        credentials: Credentials,
    ) -> Result<Self, RegistryClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // The operator is in the cluster; a proxy meant for the outside must not see it.
            .no_proxy()
            .build()?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
            party,
            credentials,
            http,
        })
    }

    /// Registers the node. Namespace, cluster and party are the client's, and `sentAt` is
    /// set to now, whatever `registration` says.
    pub async fn register(&self, registration: &Registration) -> Result<NodeRecord, RegistryClientError> {
        let registration = Registration {
            namespace: self.namespace.clone(),
            cluster: self.cluster.clone(),
            party: self.party,
            sent_at: unix_ms(),
            ..registration.clone()
        };
        self.post(REGISTER_PATH, &RegistryMessage::Register(registration)).await
    }

    /// Sends a heartbeat; [`RegistryClientError::NotRegistered`] means register again.
    /// Namespace, cluster and party are the client's, and `sentAt` is set to now.
    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<NodeRecord, RegistryClientError> {
        let heartbeat = Heartbeat {
            namespace: self.namespace.clone(),
            cluster: self.cluster.clone(),
            party: self.party,
            sent_at: unix_ms(),
            ..heartbeat.clone()
        };
        self.post(HEARTBEAT_PATH, &RegistryMessage::Heartbeat(heartbeat)).await
    }

    /// Every registered node of this node's cluster, as the operator sees them.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, RegistryClientError> {
        let url = format!("{}{}", self.base_url, registry::nodes_path(&self.namespace, &self.cluster));
        answer(self.http.get(url).send().await?).await
    }

    /// `message` as the registry expects it: its JSON text, the current certificate, and
    /// the signature over [`registry::signing_input`] of that text.
    pub async fn sign(&self, message: &RegistryMessage) -> Result<SignedMessage, RegistryClientError> {
        let (key, certificate) = match &self.credentials {
            Credentials::TlsDir(dir) => {
                (SecretPem::new(read(&dir.join("tls.key")).await?), read(&dir.join("tls.crt")).await?)
            }
            Credentials::Fixed { key, cert_pem } => (key.clone(), cert_pem.clone()),
        };
        // Serializing a struct of strings and integers cannot fail.
        let payload = serde_json::to_string(message).map_err(|e| RegistryClientError::Response(e.to_string()))?;
        let signature = torcus_certs::sign_with_key(&key, &registry::signing_input(&payload))?;
        Ok(SignedMessage { payload, certificate, signature: hex::encode(signature) })
    }

    async fn post(&self, path: &str, message: &RegistryMessage) -> Result<NodeRecord, RegistryClientError> {
        let signed = self.sign(message).await?;
        let body = serde_json::to_vec(&signed).map_err(|e| RegistryClientError::Response(e.to_string()))?;
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        answer(response).await
    }
}

/// Registers `registration`, retrying with capped exponential backoff, then heartbeats every
/// `interval` with the session counters `stats` returns (completed, failed) and the key
/// shares held, until `stop`.
/// When the operator answers a heartbeat with 404 (it restarted and forgot), registers again.
pub fn spawn_heartbeats(
    client: Arc<RegistryClient>,
    registration: Registration,
    interval: Duration,
    stats: impl Fn() -> (u64, u64, Vec<HeldKey>) + Send + 'static,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let span = info_span!("registry", party = client.party, cluster = %client.cluster);
    tokio::spawn(
        async move {
            tokio::select! {
                () = heartbeat_loop(&client, &registration, interval, stats) => {}
                () = stop.cancelled() => {}
            }
        }
        .instrument(span),
    )
}

async fn heartbeat_loop(
    client: &RegistryClient,
    registration: &Registration,
    interval: Duration,
    stats: impl Fn() -> (u64, u64, Vec<HeldKey>) + Send,
) {
    loop {
        register_until_accepted(client, registration).await;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate; the registration was the first sign of life
        let mut failing = false;
        loop {
            ticker.tick().await;
            let (sessions_ok, sessions_failed, keys) = stats();
            let heartbeat = Heartbeat {
                namespace: String::new(),
                cluster: String::new(),
                party: 0,
                sent_at: 0,
                sessions_ok,
                sessions_failed,
                uptime_secs: unix_ms().saturating_sub(registration.started_at) / 1000,
                keys,
            };
            match client.heartbeat(&heartbeat).await {
                Ok(_) => {
                    if std::mem::take(&mut failing) {
                        info!("heartbeats accepted again");
                    }
                }
                Err(RegistryClientError::NotRegistered) => {
                    info!("the registry forgot this node; registering again");
                    break;
                }
                // One line when heartbeats start failing, not one per interval.
                Err(error) if !failing => {
                    warn!(%error, "heartbeat failed");
                    failing = true;
                }
                Err(error) => debug!(%error, "heartbeat failed"),
            }
        }
    }
}

async fn register_until_accepted(client: &RegistryClient, registration: &Registration) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        match client.register(registration).await {
            Ok(_) => {
                info!(address = %registration.address, "registered with the operator");
                return;
            }
            Err(error) => {
                warn!(%error, retry_in = ?backoff, "registration failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The JSON of a 2xx answer, or the error the registry answered with.
async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, RegistryClientError> {
    let status = response.status();
    let body = read_limited(response).await?;
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| RegistryClientError::Response(e.to_string()));
    }
    if status == reqwest::StatusCode::NOT_FOUND
        && serde_json::from_slice::<RegistryError>(&body).is_ok_and(|e| e.reason == "not_registered")
    {
        return Err(RegistryClientError::NotRegistered);
    }
    let RegistryError { error, reason } = serde_json::from_slice(&body).unwrap_or_else(|_| RegistryError {
        error: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        reason: "unknown".into(),
    });
    Err(RegistryClientError::Refused { status: status.as_u16(), reason, error })
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, RegistryClientError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(RegistryClientError::Response(format!("answer exceeds {MAX_RESPONSE_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn read(path: &Path) -> Result<String, RegistryClientError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|source| RegistryClientError::Read { path: path.display().to_string(), source })
}

fn unix_ms() -> u64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::Json;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use torcus_certs::{
        CertificateAuthority, Duration as CertDuration, Identity, IssuedCertificate, OffsetDateTime, Role,
    };

    use super::*;

    fn issue(ca: &CertificateAuthority, party_index: u16) -> IssuedCertificate {
        let identity =
            Identity { namespace: "default".into(), cluster: "demo".into(), role: Role::Node { party_index } };
        ca.issue(&identity, &[], &[], CertDuration::hours(1), OffsetDateTime::now_utc()).unwrap()
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("torcus demo CA", CertDuration::days(1), OffsetDateTime::now_utc()).unwrap()
    }

    fn write_tls(dir: &Path, leaf: &IssuedCertificate) {
        std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), leaf.key_pem.expose()).unwrap();
    }

    fn registration() -> Registration {
        Registration {
            namespace: String::new(),
            cluster: String::new(),
            party: 0,
            address: "10.0.0.12".into(),
            http_port: 8080,
            p2p_port: 7443,
            version: "test".into(),
            started_at: unix_ms(),
            sent_at: 0,
            capabilities: None,
        }
    }

    /// What the operator would accept: the identity the certificate verifies to.
    fn verify(signed: &SignedMessage, bundle: &str) -> Result<(Identity, RegistryMessage), torcus_certs::Error> {
        let signature = hex::decode(&signed.signature).unwrap();
        let input = registry::signing_input(&signed.payload);
        let identity =
            torcus_certs::verify_signed(&signed.certificate, bundle, &input, &signature, OffsetDateTime::now_utc())?;
        Ok((identity, serde_json::from_str(&signed.payload).unwrap()))
    }

    #[tokio::test]
    async fn signs_the_exact_payload_with_the_current_certificate() {
        let ca = ca();
        let dir = tempfile::tempdir().unwrap();
        let first = issue(&ca, 2);
        write_tls(dir.path(), &first);
        let client =
            RegistryClient::from_tls_dir("http://127.0.0.1:1/", "default", "demo", 2, dir.path().into()).unwrap();
        assert_eq!(client.base_url, "http://127.0.0.1:1");

        let message = RegistryMessage::Heartbeat(Heartbeat {
            namespace: "default".into(),
            cluster: "demo".into(),
            party: 2,
            sent_at: 42,
            sessions_ok: 1,
            sessions_failed: 2,
            uptime_secs: 3,
            keys: Vec::new(),
        });
        let signed = client.sign(&message).await.unwrap();
        assert_eq!(signed.certificate, first.cert_pem);
        let (identity, parsed) = verify(&signed, ca.cert_pem()).unwrap();
        assert_eq!((identity.role, parsed), (Role::Node { party_index: 2 }, message.clone()));
        assert!(signed.payload.starts_with(r#"{"kind":"heartbeat","#), "{}", signed.payload);

        // The signature covers the domain-separated payload, not the bare payload.
        let bare = torcus_certs::verify_signed(
            &signed.certificate,
            ca.cert_pem(),
            signed.payload.as_bytes(),
            &hex::decode(&signed.signature).unwrap(),
            OffsetDateTime::now_utc(),
        );
        assert!(matches!(bare, Err(torcus_certs::Error::BadSignature)));

        // Rotated in place: the next message carries the new certificate.
        let second = issue(&ca, 2);
        write_tls(dir.path(), &second);
        let signed = client.sign(&message).await.unwrap();
        assert_eq!(signed.certificate, second.cert_pem);
        verify(&signed, ca.cert_pem()).unwrap();

        // A missing key is an error, not a panic.
        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        assert!(matches!(client.sign(&message).await, Err(RegistryClientError::Read { .. })));
    }

    /// What the stub registry saw, and how it misbehaves.
    #[derive(Default)]
    struct Stub {
        bundle: String,
        messages: Mutex<Vec<RegistryMessage>>,
        /// Registrations to refuse with 503 first.
        refuse_registrations: Mutex<u32>,
        /// Heartbeats to answer with 404 (forgotten) first.
        forget_heartbeats: Mutex<u32>,
    }

    fn record(party: u16) -> NodeRecord {
        NodeRecord {
            party,
            address: "10.0.0.12".into(),
            http_port: 8080,
            p2p_port: 7443,
            version: "test".into(),
            online: true,
            health_score: 1.0,
            reliability: 1.0,
            latency_score: 1.0,
            uptime_score: 1.0,
            last_heartbeat: None,
            registered_at: 0,
            started_at: 0,
            sessions_ok: 0,
            sessions_failed: 0,
            capabilities: None,
            keys: Vec::new(),
        }
    }

    fn refuse(status: StatusCode, reason: &str) -> Response {
        (status, Json(RegistryError { error: "stub".into(), reason: reason.into() })).into_response()
    }

    async fn stub_post(State(stub): State<Arc<Stub>>, Json(signed): Json<SignedMessage>) -> Response {
        let Ok((identity, message)) = verify(&signed, &stub.bundle) else {
            return refuse(StatusCode::UNAUTHORIZED, "bad_signature");
        };
        let (namespace, cluster, party) = message.node();
        assert_eq!(identity.uri(), format!("spiffe://torcus.io/ns/{namespace}/mpccluster/{cluster}/party/{party}"));
        assert!(message.sent_at().abs_diff(unix_ms()) < 5000);
        let countdown = match message {
            RegistryMessage::Register(_) => &stub.refuse_registrations,
            RegistryMessage::Heartbeat(_) => &stub.forget_heartbeats,
        };
        {
            let mut left = countdown.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return match message {
                    RegistryMessage::Register(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "busy"),
                    RegistryMessage::Heartbeat(_) => refuse(StatusCode::NOT_FOUND, "not_registered"),
                };
            }
        }
        stub.messages.lock().unwrap().push(message);
        Json(record(party)).into_response()
    }

    #[tokio::test]
    async fn registers_heartbeats_and_registers_again_when_forgotten() {
        let ca = ca();
        let leaf = issue(&ca, 1);
        let stub = Arc::new(Stub {
            bundle: ca.cert_pem().to_owned(),
            refuse_registrations: Mutex::new(1),
            forget_heartbeats: Mutex::new(1),
            ..Stub::default()
        });
        let app = axum::Router::new()
            .route(REGISTER_PATH, post(stub_post))
            .route(HEARTBEAT_PATH, post(stub_post))
            .route(registry::NODES_PATH, get(|| async { Json(vec![record(0), record(1)]) }))
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server_stop = CancellationToken::new();
        let server = tokio::spawn(
            axum::serve(listener, app).with_graceful_shutdown(server_stop.clone().cancelled_owned()).into_future(),
        );

        let client = Arc::new(RegistryClient::new(&url, "default", "demo", 1, leaf.key_pem, leaf.cert_pem).unwrap());
        assert_eq!(client.nodes().await.unwrap().len(), 2);

        let stop = CancellationToken::new();
        let task = spawn_heartbeats(
            client.clone(),
            registration(),
            Duration::from_millis(50),
            || (5, 1, Vec::new()),
            stop.clone(),
        );
        // Refused once (retried after the backoff), registered, forgotten at the first
        // heartbeat, registered again, then heartbeating.
        let kinds = |stub: &Stub| {
            let messages = stub.messages.lock().unwrap();
            let registrations = messages.iter().filter(|m| matches!(m, RegistryMessage::Register(_))).count();
            (registrations, messages.len() - registrations)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while kinds(&stub).0 < 2 || kinds(&stub).1 < 2 {
            assert!(tokio::time::Instant::now() < deadline, "stub saw {:?}", kinds(&stub));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task).await.unwrap().unwrap();

        let messages = stub.messages.lock().unwrap().clone();
        assert!(matches!(&messages[..2], [RegistryMessage::Register(_), RegistryMessage::Register(_)]), "{messages:?}");
        let RegistryMessage::Register(first) = &messages[0] else { unreachable!() };
        assert_eq!((first.namespace.as_str(), first.cluster.as_str(), first.party), ("default", "demo", 1));
        assert_eq!(first.address, "10.0.0.12");
        let Some(RegistryMessage::Heartbeat(beat)) = messages.last() else { panic!("{messages:?}") };
        assert_eq!((beat.party, beat.sessions_ok, beat.sessions_failed), (1, 5, 1));
        // Strictly increasing, as the registry requires.
        assert!(messages.windows(2).all(|w| w[0].sent_at() < w[1].sent_at()), "{messages:?}");

        // A refusal surfaces its reason: here, a key that is not the certificate's.
        let stranger = issue(&self::ca(), 1);
        let bad = RegistryClient::new(&url, "default", "demo", 1, stranger.key_pem, issue(&ca, 1).cert_pem).unwrap();
        match bad.register(&registration()).await {
            Err(RegistryClientError::Refused { status: 401, reason, .. }) => assert_eq!(reason, "bad_signature"),
            other => panic!("{other:?}"),
        }

        server_stop.cancel();
        server.await.unwrap().unwrap();
    }
}
