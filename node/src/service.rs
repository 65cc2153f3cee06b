//! A node's sessions: grants in, MPC runs out.
//!
//! The initiator of a grant (chosen by the grant itself) proposes the
//! session to the other participants over the transport's control channel;
//! each verifies the grant on its own — signature, validity, membership,
//! replay — and acknowledges; once every acknowledgement is in, the
//! initiator says Start and all run the protocol. A participant that does
//! not answer in time turns into an Abort naming it, never a hang. Every
//! grant is used at most once per node, across restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use torcus_contract::{
    Control, Grant, GrantError, GrantKind, InitiatorHandshake, ParticipantHandshake, SignedGrant, UsedSessions,
};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::engine::{self, Aux, Channel, Envelope, Primes, Share};
use crate::router::Router;
use crate::store::ShareStore;
use crate::transport::Transport;
use crate::used_sessions::FileUsedSessions;

/// How long the initiator waits for every acknowledgement, and a
/// participant for Start.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a keygen (with aux info) may run.
pub const KEYGEN_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest a signing session may run.
pub const SIGN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest silence of every other party in a signing session.
pub const SIGN_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest silence of every other party in a keygen or aux info session.
pub const KEYGEN_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const AUX_SHARE: &str = "aux-info";

pub use torcus_contract::api::{Outcome, SessionStatus, SignatureOut};

/// Why a session could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The grant was refused.
    #[error("grant refused: {0}")]
    Grant(#[from] GrantError),
    /// Another participant is the initiator of this grant.
    #[error("party {initiator} is the initiator of this grant")]
    NotInitiator {
        /// Who to ask instead.
        initiator: u16,
    },
    /// The key is not held here.
    #[error("no key named {0:?}")]
    UnknownKey(String),
    /// The key exists already; keys are never generated twice.
    #[error("key {0:?} exists already")]
    KeyExists(String),
    /// The session was aborted.
    #[error("session aborted: {0}")]
    Aborted(String),
    /// The protocol failed.
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// The protocol did not finish in time.
    #[error("session timed out after {0:?}")]
    Timeout(Duration),
    /// The share store failed.
    #[error("share store: {0}")]
    Store(#[from] crate::store::Error),
    /// A stored share could not be read back.
    #[error("stored share is unreadable: {0}")]
    Corrupt(String),
}

impl SessionError {
    /// Low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Grant(e) => e.reason(),
            Self::NotInitiator { .. } => "not_initiator",
            Self::UnknownKey(_) => "unknown_key",
            Self::KeyExists(_) => "key_exists",
            Self::Aborted(_) => "aborted",
            Self::Engine(_) => "protocol",
            Self::Timeout(_) => "timeout",
            Self::Store(_) | Self::Corrupt(_) => "storage",
        }
    }
}

/// Where control messages of one session go: (authenticated sender, message).
type ControlSender = mpsc::Sender<(u16, Control)>;

/// The node's session logic over transport `T`.
pub struct Service<T: Transport> {
    me: u16,
    threshold: u16,
    namespace: String,
    cluster: String,
    grant_key: VerifyingKey,
    transport: Arc<T>,
    router: Arc<Router>,
    store: ShareStore,
    used: Mutex<FileUsedSessions>,
    shares: Mutex<HashMap<String, Arc<Share>>>,
    primes: Mutex<Option<Primes>>,
    primes_ready: Notify,
    handshakes: Mutex<HashMap<[u8; 32], ControlSender>>,
    statuses: Mutex<HashMap<[u8; 32], SessionStatus>>,
    metrics: crate::metrics::NodeMetrics,
}

impl<T: Transport> std::fmt::Debug for Service<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("me", &self.me).field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

/// What a [`Service`] is built from.
#[derive(Debug)]
pub struct ServiceParts<T> {
    /// This node's party index.
    pub me: u16,
    /// Parties needed to sign (from the cluster configuration).
    pub threshold: u16,
    /// Namespace of the cluster.
    pub namespace: String,
    /// Name of the cluster.
    pub cluster: String,
    /// Key that verifies grants.
    pub grant_key: VerifyingKey,
    /// The transport to peers.
    pub transport: Arc<T>,
    /// The router its incoming envelopes feed.
    pub router: Arc<Router>,
    /// Where shares live.
    pub store: ShareStore,
    /// Used session ids, on disk.
    pub used: FileUsedSessions,
    /// Metrics.
    pub metrics: crate::metrics::NodeMetrics,
}

impl<T: Transport> Service<T> {
    /// Builds the service and loads the shares already on disk.
    pub fn new(parts: ServiceParts<T>) -> Result<Arc<Self>, SessionError> {
        let ServiceParts { me, threshold, namespace, cluster, grant_key, transport, router, store, used, metrics } =
            parts;
        let mut shares = HashMap::new();
        for name in store.list()? {
            if let Some(key) = name.strip_prefix("key-") {
                let bytes = store.get(&name)?.ok_or_else(|| SessionError::Corrupt(name.clone()))?;
                let share: Share = serde_json::from_slice(&bytes).map_err(|e| SessionError::Corrupt(e.to_string()))?;
                shares.insert(key.to_owned(), Arc::new(share));
            }
        }
        info!(me, keys = shares.len(), "loaded key shares");
        Ok(Arc::new(Self {
            me,
            threshold,
            namespace,
            cluster,
            grant_key,
            transport,
            router,
            store,
            used: Mutex::new(used),
            shares: Mutex::new(shares),
            primes: Mutex::new(None),
            primes_ready: Notify::new(),
            handshakes: Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    /// Hands over the safe primes for aux info (generated in the background
    /// at start-up, never on the signing path).
    pub fn set_primes(&self, primes: Primes) {
        *self.primes.lock().unwrap_or_else(PoisonError::into_inner) = Some(primes);
        self.primes_ready.notify_waiters();
    }

    /// Whether the primes for aux info are ready (or aux info exists).
    pub fn primes_ready(&self) -> bool {
        self.primes.lock().unwrap_or_else(PoisonError::into_inner).is_some()
            || self.store.contains(AUX_SHARE).unwrap_or(false)
    }

    /// Names and public keys of the keys held here.
    pub fn keys(&self) -> Vec<(String, String)> {
        let shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys: Vec<_> =
            shares.iter().map(|(k, s)| (k.clone(), hex::encode(s.shared_public_key.to_bytes(true)))).collect();
        keys.sort();
        keys
    }

    /// Status of a session this node has seen.
    pub fn status(&self, session: &[u8; 32]) -> Option<SessionStatus> {
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner).get(session).cloned()
    }

    /// Runs the session of `grant` as its initiator: the HTTP API's entry.
    pub async fn initiate(self: &Arc<Self>, signed: SignedGrant) -> Result<Outcome, SessionError> {
        // Who initiates is a pure function of the grant: answer that before
        // verifying, since verifying consumes the grant's session id here,
        // and the real initiator's proposal must still be accepted.
        signed.grant.check()?;
        if !signed.grant.participants.contains(&self.me) {
            // Verification stops at membership, before it records anything.
            self.verify(&signed)?;
            return Err(GrantError::NotAMember { me: self.me }.into());
        }
        let initiator = signed.grant.initiator();
        if initiator != self.me {
            return Err(SessionError::NotInitiator { initiator });
        }
        let grant = self.verify(&signed)?.clone();
        self.precheck(&grant)?;
        let session = grant.session_id();
        self.set_status(session, SessionStatus::Proposed);
        let mut control = self.open_handshake(session);
        let result = async {
            let mut handshake = InitiatorHandshake::for_grant(&grant, Instant::now() + HANDSHAKE_TIMEOUT);
            self.broadcast_control(&grant, &Control::Proposal { grant: signed.clone() }).await;
            let start = loop {
                let wait = handshake.deadline().saturating_duration_since(Instant::now());
                match tokio::time::timeout(wait, control.recv()).await {
                    Ok(Some((from, Control::Ack { .. }))) => {
                        if let Some(start) = handshake.on_ack(from) {
                            break start;
                        }
                    }
                    Ok(Some((from, Control::Abort { reason, .. }))) if handshake.on_abort(from) => {
                        return Err(SessionError::Aborted(format!("party {from}: {reason}")));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        let abort = handshake.poll_timeout(Instant::now() + HANDSHAKE_TIMEOUT);
                        let reason = match &abort {
                            Some(Control::Abort { reason, .. }) => reason.clone(),
                            _ => "handshake timed out".to_owned(),
                        };
                        if let Some(abort) = abort {
                            self.broadcast_control(&grant, &abort).await;
                        }
                        return Err(SessionError::Aborted(reason));
                    }
                }
            };
            self.broadcast_control(&grant, &start).await;
            self.run(&grant, control).await
        }
        .await;
        self.finish(session, &result);
        result
    }

    /// Handles one control envelope from the transport (already
    /// authenticated: `env.from` is who sent it).
    pub async fn on_control(self: &Arc<Self>, env: Envelope) {
        let Ok(control) = serde_json::from_slice::<Control>(&env.payload) else {
            self.metrics.dropped_control.inc();
            return;
        };
        match control {
            Control::Proposal { grant } => {
                let this = Arc::clone(self);
                tokio::spawn(async move { this.participate(env.from, grant).await });
            }
            other => {
                let sender =
                    self.handshakes.lock().unwrap_or_else(PoisonError::into_inner).get(&other.session_id()).cloned();
                match sender {
                    Some(tx) => {
                        let _ = tx.send((env.from, other)).await;
                    }
                    None => self.metrics.dropped_control.inc(),
                }
            }
        }
    }

    async fn participate(self: Arc<Self>, from: u16, signed: SignedGrant) {
        let session = signed.grant.session_id();
        let grant = match self.verify(&signed) {
            Ok(grant) if grant.initiator() == from => grant.clone(),
            Ok(grant) => {
                let reason = format!("proposal came from party {from}, but the initiator is {}", grant.initiator());
                self.send_control(from, grant, &Control::Abort { session_id: session, from: self.me, reason }).await;
                return;
            }
            Err(error) => {
                warn!(from, %error, "refused a proposal");
                let reason = format!("party {} refused the grant: {error}", self.me);
                self.send_control(from, &signed.grant, &Control::Abort { session_id: session, from: self.me, reason })
                    .await;
                return;
            }
        };
        if let Err(error) = self.precheck(&grant) {
            let reason = format!("party {}: {error}", self.me);
            self.send_control(from, &grant, &Control::Abort { session_id: session, from: self.me, reason }).await;
            return;
        }
        self.set_status(session, SessionStatus::Proposed);
        let mut control = self.open_handshake(session);
        let mut handshake = ParticipantHandshake::new(&grant, self.me, Instant::now() + HANDSHAKE_TIMEOUT);
        self.send_control(from, &grant, &handshake.ack()).await;
        let result = async {
            loop {
                let wait = handshake.deadline().saturating_duration_since(Instant::now());
                match tokio::time::timeout(wait, control.recv()).await {
                    Ok(Some((from, Control::Start { .. }))) if handshake.on_start(from) => break,
                    Ok(Some((from, Control::Abort { reason, .. }))) if handshake.on_abort(from) => {
                        return Err(SessionError::Aborted(format!("party {from}: {reason}")));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        if let Some(abort) = handshake.poll_timeout(Instant::now() + HANDSHAKE_TIMEOUT) {
                            self.broadcast_control(&grant, &abort).await;
                        }
                        return Err(SessionError::Aborted("no start from initiator".into()));
                    }
                }
            }
            self.run(&grant, control).await
        }
        .await;
        self.finish(session, &result);
    }

    /// Runs the protocol of a started session; an Abort from any
    /// participant, or the timeout, ends it.
    async fn run(&self, grant: &Grant, mut control: mpsc::Receiver<(u16, Control)>) -> Result<Outcome, SessionError> {
        self.set_status(grant.session_id(), SessionStatus::Running);
        let (timeout, kind) = match &grant.kind {
            GrantKind::Keygen { .. } => (KEYGEN_TIMEOUT, "keygen"),
            GrantKind::Sign { .. } => (SIGN_TIMEOUT, "sign"),
        };
        let started = Instant::now();
        let protocol = self.protocol(grant);
        let aborted = async {
            loop {
                match control.recv().await {
                    Some((from, Control::Abort { reason, .. })) if grant.participants.contains(&from) => {
                        break format!("party {from}: {reason}");
                    }
                    Some(_) => {}
                    None => std::future::pending::<()>().await,
                }
            }
        };
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, protocol) => r.unwrap_or(Err(SessionError::Timeout(timeout))),
            reason = aborted => Err(SessionError::Aborted(reason)),
        };
        if let Err(error) = &result
            && !matches!(error, SessionError::Aborted(_))
        {
            let abort = Control::Abort { session_id: grant.session_id(), from: self.me, reason: error.to_string() };
            self.broadcast_control(grant, &abort).await;
        }
        self.metrics.session_duration.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
        result
    }

    async fn protocol(&self, grant: &Grant) -> Result<Outcome, SessionError> {
        let eid = grant.execution_id();
        let session = grant.session_id();
        match &grant.kind {
            GrantKind::Keygen { key } => {
                let n = u16::try_from(grant.participants.len()).unwrap_or(u16::MAX);
                let aux = self.aux_info(grant, n).await?;
                let net = self.net(session, grant);
                let core = engine::keygen(&eid, n, self.threshold, net).await?;
                let share = engine::complete(core, aux)?;
                let bytes =
                    Zeroizing::new(serde_json::to_vec(&share).map_err(|e| SessionError::Corrupt(e.to_string()))?);
                self.store.put(&format!("key-{key}"), &bytes)?;
                let public_key = hex::encode(share.shared_public_key.to_bytes(true));
                self.shares.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), Arc::new(share));
                info!(key, %public_key, "generated a key");
                Ok(Outcome::Keygen { key: key.clone(), public_key })
            }
            GrantKind::Sign { key, digest, derivation_path } => {
                let share = self.share(key)?;
                let net = self.net(session, grant);
                let signature = engine::sign(&eid, &share, digest, derivation_path, net).await?;
                Ok(Outcome::Signature(signature_out(&share, digest, derivation_path, &signature)?))
            }
        }
    }

    /// Aux info: loaded from the store, or generated once for the cluster
    /// (in a session of its own, derived from the keygen grant).
    async fn aux_info(&self, grant: &Grant, n: u16) -> Result<Aux, SessionError> {
        if let Some(bytes) = self.store.get(AUX_SHARE)? {
            return serde_json::from_slice(&bytes).map_err(|e| SessionError::Corrupt(e.to_string()));
        }
        let primes = loop {
            let notified = self.primes_ready.notified();
            if let Some(p) = self.primes.lock().unwrap_or_else(PoisonError::into_inner).take() {
                break p;
            }
            notified.await;
        };
        let mut eid = grant.execution_id();
        eid.extend_from_slice(b"/aux");
        let session: [u8; 32] =
            Sha256::new().chain_update(b"torcus-aux:").chain_update(grant.session_id()).finalize().into();
        let aux = engine::aux_info(&eid, n, primes, self.net(session, grant)).await?;
        let bytes = Zeroizing::new(serde_json::to_vec(&aux).map_err(|e| SessionError::Corrupt(e.to_string()))?);
        self.store.put(AUX_SHARE, &bytes)?;
        Ok(aux)
    }

    fn net(&self, session: [u8; 32], grant: &Grant) -> engine::SessionNet {
        let mut net = self.router.session(Arc::clone(&self.transport), session, self.me, grant.participants.clone());
        // Between two messages a party computes at most one round: short for
        // signing, long for aux info's proofs on a slow machine.
        net.idle_timeout = Some(match grant.kind {
            GrantKind::Sign { .. } => SIGN_IDLE_TIMEOUT,
            GrantKind::Keygen { .. } => KEYGEN_IDLE_TIMEOUT,
        });
        net
    }

    fn share(&self, key: &str) -> Result<Arc<Share>, SessionError> {
        self.shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .ok_or_else(|| SessionError::UnknownKey(key.into()))
    }

    fn verify<'g>(&self, signed: &'g SignedGrant) -> Result<&'g Grant, SessionError> {
        let now = torcus_contract::unix_now();
        let mut used = UsedOnDisk { file: &self.used, now };
        let grant = signed
            .verify(&self.grant_key, self.me, now, &mut used)
            .inspect_err(|e| self.metrics.grants_rejected.with_label_values(&[e.reason()]).inc())?;
        if grant.namespace != self.namespace || grant.cluster != self.cluster {
            self.metrics.grants_rejected.with_label_values(&["wrong_cluster"]).inc();
            return Err(GrantError::Malformed(format!("grant is for {}/{}", grant.namespace, grant.cluster)).into());
        }
        Ok(grant)
    }

    /// Checks that this node can take part at all, before acknowledging.
    fn precheck(&self, grant: &Grant) -> Result<(), SessionError> {
        match &grant.kind {
            GrantKind::Keygen { key }
                if self.shares.lock().unwrap_or_else(PoisonError::into_inner).contains_key(key) =>
            {
                Err(SessionError::KeyExists(key.clone()))
            }
            GrantKind::Sign { key, .. } => self.share(key).map(|_| ()),
            GrantKind::Keygen { .. } => Ok(()),
        }
    }

    fn open_handshake(&self, session: [u8; 32]) -> mpsc::Receiver<(u16, Control)> {
        let (tx, rx) = mpsc::channel(64);
        self.handshakes.lock().unwrap_or_else(PoisonError::into_inner).insert(session, tx);
        rx
    }

    fn finish(&self, session: [u8; 32], result: &Result<Outcome, SessionError>) {
        self.handshakes.lock().unwrap_or_else(PoisonError::into_inner).remove(&session);
        self.router.close(&session);
        let status = match result {
            Ok(outcome) => {
                self.metrics.sessions.with_label_values(&[outcome_kind(outcome), "completed"]).inc();
                SessionStatus::Completed { outcome: outcome.clone() }
            }
            Err(error) => {
                warn!(%error, "session failed");
                self.metrics.sessions.with_label_values(&["any", error.reason()]).inc();
                SessionStatus::Failed { reason: error.to_string() }
            }
        };
        self.set_status(session, status);
    }

    fn set_status(&self, session: [u8; 32], status: SessionStatus) {
        let mut statuses = self.statuses.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded: the oldest statuses are for people, not for correctness.
        if statuses.len() > 10_000 {
            statuses.clear();
        }
        statuses.insert(session, status);
    }

    async fn broadcast_control(&self, grant: &Grant, control: &Control) {
        for &to in grant.participants.iter().filter(|p| **p != self.me) {
            self.send_control(to, grant, control).await;
        }
    }

    async fn send_control(&self, to: u16, grant: &Grant, control: &Control) {
        let payload = match serde_json::to_vec(control) {
            Ok(p) => p,
            Err(_) => return,
        };
        let env = Envelope {
            session: grant.session_id(),
            channel: Channel::Control,
            from: self.me,
            to: Some(to),
            seq: 0,
            payload,
        };
        if let Err(error) = self.transport.send(to, env).await {
            warn!(to, %error, "could not send a control message");
        }
    }
}

fn outcome_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Keygen { .. } => "keygen",
        Outcome::Signature(_) => "sign",
    }
}

/// The on-disk replay set behind the contract's trait.
struct UsedOnDisk<'a> {
    file: &'a Mutex<FileUsedSessions>,
    now: u64,
}

impl UsedSessions for UsedOnDisk<'_> {
    fn insert(&mut self, session_id: [u8; 32], expires_at: u64) -> Result<bool, std::io::Error> {
        self.file.lock().unwrap_or_else(PoisonError::into_inner).insert(session_id, expires_at, self.now)
    }
}

/// r, s, recovery id and DER of a signature, checked against the key.
fn signature_out(
    share: &Share,
    digest: &[u8; 32],
    path: &[u32],
    signature: &cggmp21::Signature<engine::Curve>,
) -> Result<SignatureOut, SessionError> {
    let public = engine::public_key(share, path)?.to_bytes(true).to_vec();
    let r: [u8; 32] = signature.r.to_be_bytes().as_bytes().try_into().map_err(|_| engine::EngineError::Combine)?;
    let s: [u8; 32] = signature.s.to_be_bytes().as_bytes().try_into().map_err(|_| engine::EngineError::Combine)?;
    let sig = k256::ecdsa::Signature::from_scalars(r, s).map_err(|_| engine::EngineError::Combine)?;
    let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(&public).map_err(|_| engine::EngineError::Combine)?;
    let recovery = k256::ecdsa::RecoveryId::trial_recovery_from_prehash(&key, digest, &sig)
        .map_err(|_| engine::EngineError::Combine)?;
    Ok(SignatureOut {
        r: hex::encode(r),
        s: hex::encode(s),
        recovery_id: recovery.to_byte(),
        der: hex::encode(sig.to_der().as_bytes()),
        public_key: hex::encode(public),
    })
}
