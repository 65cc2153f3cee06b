//! A node's sessions: grants in, MPC runs out.
//!
//! The initiator of a grant (chosen by the grant itself) proposes the
//! session to the other participants over the transport's control channel;
//! each verifies the grant on its own — signature, validity, membership,
//! replay — and acknowledges; once every acknowledgement is in, the
//! initiator says Start and all run the protocol. A participant that does
//! not answer in time turns into an Abort naming it, never a hang. Every
//! grant is used at most once per node, across restarts.
//!
//! Presignatures (`crate::pool`): a background task (the *presigner*) keeps
//! a pool for every key, every derivation path the cluster configuration
//! names (`presignaturePaths`, the key itself by default) and every signer
//! set of `threshold` parties that this node leads (is the lowest index of).
//! It proposes a presigning session to the rest of the set with a random
//! session id and no grant; each member checks the sender, the set, the path
//! and its own pool before it acks. The path is fixed on the protocol before
//! the presignature exists, never set on it afterwards.
//! Only a grant whose message is a payload the nodes hash themselves can
//! use a presignature, and only one made for the grant's key, path and
//! signer set; a raw digest always runs the full protocol (see
//! `crate::engine`). Signing comes first: neither the presigner nor a member starts
//! presigning while a grant session runs on this node or one ended less
//! than [`PRESIGN_QUIET`] ago (back-to-back signing leaves no room for it
//! anyway), a presigning session running when one starts is abandoned
//! (preempted), and a node is in at most one presigning session at a time. A signing session
//! whose initiator holds a presignature of the grant's signer set offers
//! it in the proposal; every member that holds it takes it out of its pool
//! and says so in its ack, and only if all did does Start name it — then
//! each signs with it (one message, no heavy rounds), otherwise the session
//! runs the full protocol and the taken presignatures are dropped. Either
//! way a presignature leaves every pool before any partial signature is
//! issued, and never goes back.

use std::collections::HashMap;
use std::future::Future;
#[cfg(feature = "test-hooks")]
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use torcus_contract::{
    Control, Grant, GrantError, GrantKind, Handshake, HandshakeStep, InitiatorHandshake, ParticipantHandshake, Scheme,
    SignMessage, SignedGrant, UsedSessions,
};
use tracing::{Instrument, info, warn};
use zeroize::Zeroizing;

mod error;
mod presign;

pub use error::{Fault, SessionError};
use presign::SeenIds;
pub use presign::led_sets;

use crate::engine::frost::FrostShare;
use crate::engine::{self, AnyShare, Aux, Channel, Envelope, Presig, Primes, Share};
use crate::pool::{PoolId, Pools, Taken};
use crate::presign_schedule::PresignSchedule;
use crate::router::Router;
use crate::store::ShareStore;
use crate::transport::Transport;
use crate::used_sessions::FileUsedSessions;

/// How long the initiator waits for every acknowledgement, and a
/// participant for Start.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the initiator sends its proposal again to the participants
/// that have not acked. A proposal is lost with its connection (a dial
/// whose handshake packets were lost, a peer that restarted), and one lost
/// proposal would otherwise cost the session; a participant answers a
/// repeated proposal with the ack it sent, and never runs a session twice.
pub const PROPOSAL_RESEND: Duration = Duration::from_secs(2);
/// Proposals of sessions being run here as a participant at once (each of
/// a grant the operator signed, tracked until its session ends); more are
/// dropped.
const MAX_PENDING_PROPOSALS: usize = 256;
/// How often a participant sends its ack again for repeats of one proposal.
const ACK_AGAIN_EVERY: Duration = Duration::from_secs(1);
/// Longest a keygen (with aux info) may run.
pub const KEYGEN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a node accused in an Abort keeps running its protocol, for its
/// own checks to name who broke the session (a false accuser fails them at
/// once, with the message it sent before accusing).
pub const ACCUSED_GRACE: Duration = Duration::from_secs(2);
/// Longest silence of every other party in a keygen or aux info session.
pub const KEYGEN_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a member of a proposed presigning session waits for this node
/// to be free (no grant session for [`PRESIGN_QUIET`], no other presigning
/// session) before it refuses; well inside the initiator's
/// [`HANDSHAKE_TIMEOUT`].
pub const PRESIGN_JOIN_WAIT: Duration = Duration::from_secs(5);
/// First and longest pause of the presigner for a signer set after a
/// failed presigning session (doubling in between), so that a dead member
/// costs little.
pub const PRESIGN_BACKOFF: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(60));
/// How long no grant session must have run on a node before it presigns.
/// About one presigning session: under a steady stream of signatures a
/// presigning session would mostly be preempted, its work wasted.
pub const PRESIGN_QUIET: Duration = Duration::from_secs(1);
/// Why a presigning session was given up for signing; the other members
/// see it at the end of the Abort's reason and do not count it as a failure.
const PREEMPTED: &str = "presigning preempted by signing";
const AUX_SHARE: &str = "aux-info";
/// Tag of the aux info this release stores (CGGMP24's shape).
const AUX_FORMAT: &str = "torcus-aux-info/cggmp24";

/// Stores `aux` under `id` unless aux info is stored already (test
/// fixtures only: a product node generates its aux info with its peers).
#[cfg(feature = "test-fixtures")]
pub fn seed_aux_info(store: &ShareStore, id: String, aux: Aux) -> Result<(), SessionError> {
    if stored_aux(store)?.is_some() {
        return Ok(());
    }
    warn!("storing aux info from a test fixture: never do this outside tests");
    let stored = StoredAux { format: AUX_FORMAT.to_owned(), id, aux };
    let bytes = Zeroizing::new(serde_json::to_vec(&stored).map_err(|e| SessionError::Corrupt(e.to_string()))?);
    store.put(AUX_SHARE, &bytes)?;
    Ok(())
}

/// The aux info on the volume. Aux info that does not open under the store
/// key is taken as none: it was sealed under keys the operator replaced
/// before any key was generated (a fresh volume that came up with keys
/// retained from a deleted cluster; see the operator's `node_keys`), and the
/// next keygen generates new aux info over it. A key share that does not
/// open is never passed over like this.
fn stored_aux(store: &ShareStore) -> Result<Option<Zeroizing<Vec<u8>>>, SessionError> {
    match store.get(AUX_SHARE) {
        Err(
            e @ (crate::store::Error::Decrypt { .. }
            | crate::store::Error::BadMagic { .. }
            | crate::store::Error::Truncated { .. }),
        ) => {
            warn!(error = %e, "stored aux info does not open under this node's store key; the next keygen generates new aux info");
            Ok(None)
        }
        other => Ok(other?),
    }
}

/// Aux info as stored, with the id keygen grants name it by. Aux info of
/// the cggmp21-based releases has no `format` and another shape: it does
/// not parse, and the next keygen generates new aux info.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAux {
    format: String,
    id: String,
    aux: Aux,
}

pub use torcus_contract::api::{FrostSignatureOut, KeyInfo, Outcome, PresignaturePools, SessionStatus, SignatureOut};

/// Which presignature an initiator offers (the API's
/// [`torcus_contract::api::PresignatureChoice`], with the id parsed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// One of its own choosing.
    Any,
    /// None.
    None,
    /// This one, or none if it does not hold it.
    Id([u8; 32]),
}

/// Where control messages of one session go: (authenticated sender, message).
type ControlSender = mpsc::Sender<(u16, Control)>;

/// A proposal this node answers as a participant.
#[derive(Default)]
struct Pending {
    /// The ack, once sent.
    ack: Option<Control>,
    /// When the ack was last sent again.
    sent_again: Option<Instant>,
}

/// A key share held in memory, by scheme.
#[derive(Clone)]
enum Held {
    Ecdsa(Arc<Share>),
    Frost(Arc<FrostShare>),
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Held").field(&self.scheme()).finish()
    }
}

impl Held {
    fn scheme(&self) -> Scheme {
        match self {
            Self::Ecdsa(_) => Scheme::EcdsaSecp256k1,
            Self::Frost(share) => share.scheme(),
        }
    }

    fn encode(&self) -> Result<Zeroizing<Vec<u8>>, engine::EngineError> {
        match self {
            Self::Ecdsa(share) => engine::encode_share(share),
            Self::Frost(share) => share.encode(),
        }
    }
}

/// See [`Sessions::repeated_proposal`].
enum Repeated {
    First,
    AckAgain(Box<Control>),
    Ignore,
}

/// The node's session logic over transport `T`.
pub struct Sessions<T: Transport> {
    me: u16,
    nodes: u16,
    threshold: u16,
    namespace: String,
    cluster: String,
    grant_key: VerifyingKey,
    transport: Arc<T>,
    router: Arc<Router>,
    store: ShareStore,
    used: Mutex<FileUsedSessions>,
    shares: Mutex<HashMap<String, Held>>,
    /// Safe primes for the next aux info, kept until that aux info is
    /// stored (a failed run retries with the same primes).
    primes: Mutex<Option<Primes>>,
    primes_ready: Notify,
    /// Whether primes are being generated now.
    primes_generating: std::sync::atomic::AtomicBool,
    /// Test fixture primes, used instead of generating.
    primes_fixture: Option<Primes>,
    /// Id of the aux info stored here, if any.
    aux_id: Mutex<Option<String>>,
    handshakes: Mutex<HashMap<[u8; 32], ControlSender>>,
    /// Proposals this node is answering as a participant, by session: the
    /// ack once sent, for a repeated proposal to get it again.
    proposals: Mutex<HashMap<[u8; 32], Pending>>,
    statuses: Mutex<HashMap<[u8; 32], SessionStatus>>,
    metrics: crate::metrics::NodeMetrics,
    /// Presignatures, in memory only.
    pools: Pools<Presig>,
    /// The schemes this node runs.
    schemes: Vec<Scheme>,
    /// The derivation paths whose presignatures are kept (per key).
    presign_paths: Vec<Vec<u32>>,
    /// When this node may presign (the policy; `crate::presign_schedule`).
    schedule: Mutex<PresignSchedule>,
    /// Wakes the presigner: a grant or presigning session ended, a key
    /// appeared.
    presigner_wake: Notify,
    /// Wakes members waiting to join a presigning session: the schedule
    /// changed.
    schedule_changed: Notify,
    /// Grant sessions running here, as the schedule counts them: a running
    /// presigning session gives way when it turns non-zero.
    foreground: watch::Sender<usize>,
    /// Presigning session ids seen lately, oldest first (bounded).
    seen_presign: Mutex<SeenIds>,
    /// TEST ONLY: how this node tampers with its signing sessions.
    #[cfg(feature = "test-hooks")]
    hostile: std::sync::OnceLock<Arc<crate::hostile::Hostile>>,
    /// TEST ONLY: seconds the grant clock runs off the system clock.
    #[cfg(feature = "test-hooks")]
    clock_offset: std::sync::atomic::AtomicI64,
}

impl<T: Transport> std::fmt::Debug for Sessions<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("me", &self.me).field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

/// What a [`Sessions`] is built from.
pub struct SessionsParts<T> {
    /// This node's party index.
    pub me: u16,
    /// Number of parties of the cluster.
    pub nodes: u16,
    /// Parties needed to sign (from the cluster configuration).
    pub threshold: u16,
    /// Presignatures to keep per key, path and signer set; 0 turns
    /// presigning off.
    pub presignature_pool_size: u16,
    /// Derivation paths to keep presignatures for (empty path: the key).
    pub presignature_paths: Vec<Vec<u32>>,
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
    /// Safe primes to use instead of generating them (tests only).
    pub primes_fixture: Option<Primes>,
    /// Used session ids, on disk.
    pub used: FileUsedSessions,
    /// Metrics.
    pub metrics: crate::metrics::NodeMetrics,
    /// The schemes this node runs (every one its build has, but in tests
    /// that play an older build): a grant of another is refused.
    pub schemes: Vec<Scheme>,
}

impl<T> std::fmt::Debug for SessionsParts<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsParts").field("me", &self.me).field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

impl<T: Transport> Sessions<T> {
    /// Builds the session logic and loads the shares already on disk.
    pub fn new(parts: SessionsParts<T>) -> Result<Arc<Self>, SessionError> {
        let SessionsParts {
            me,
            nodes,
            threshold,
            presignature_pool_size,
            presignature_paths,
            namespace,
            cluster,
            grant_key,
            transport,
            router,
            store,
            primes_fixture,
            used,
            metrics,
            schemes,
        } = parts;
        let mut shares = HashMap::new();
        for name in store.list()? {
            if let Some(key) = name.strip_prefix("key-") {
                let bytes = store.get(&name)?.ok_or_else(|| SessionError::Corrupt(name.clone()))?;
                let share = engine::decode_any_share(&bytes)
                    .map_err(|error| SessionError::ShareFormat { name: name.clone(), error })?;
                let held = match share {
                    AnyShare::Ecdsa(share) => Held::Ecdsa(Arc::new(share)),
                    AnyShare::Frost(share) => Held::Frost(Arc::new(share)),
                };
                shares.insert(key.to_owned(), held);
            }
        }
        info!(me, keys = shares.len(), "loaded key shares");
        let aux_id = match stored_aux(&store)? {
            Some(bytes) => match serde_json::from_slice::<StoredAux>(&bytes) {
                Ok(stored) if stored.format == AUX_FORMAT => Some(stored.id),
                // Kept, never deleted: the next keygen with new aux info
                // replaces it.
                Ok(stored) => {
                    warn!(format = %stored.format, "stored aux info is of another format; the next keygen generates new aux info");
                    None
                }
                Err(e) => {
                    warn!(error = %e, "stored aux info is unreadable (an older release's, or damaged); the next keygen generates new aux info");
                    None
                }
            },
            None => None,
        };
        let pools = Pools::new(
            presignature_pool_size,
            metrics.presignature_pool_depth.clone(),
            metrics.presignatures_discarded.clone(),
        );
        Ok(Arc::new(Self {
            me,
            nodes,
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
            primes_generating: std::sync::atomic::AtomicBool::new(false),
            primes_fixture,
            aux_id: Mutex::new(aux_id),
            handshakes: Mutex::new(HashMap::new()),
            proposals: Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            metrics,
            pools,
            presign_paths: presignature_paths,
            schemes,
            schedule: Mutex::new(PresignSchedule::new(PRESIGN_QUIET, PRESIGN_BACKOFF)),
            presigner_wake: Notify::new(),
            schedule_changed: Notify::new(),
            foreground: watch::Sender::new(0),
            seen_presign: Mutex::new(SeenIds::default()),
            #[cfg(feature = "test-hooks")]
            hostile: std::sync::OnceLock::new(),
            #[cfg(feature = "test-hooks")]
            clock_offset: std::sync::atomic::AtomicI64::new(0),
        }))
    }

    /// Starts generating safe primes for aux info in the background, unless
    /// they are there or on their way (or, with `only_without_aux`, aux
    /// info is stored already). Never on the signing path: at start-up, and
    /// when a keygen asks for new aux info.
    pub fn prepare_primes(self: &Arc<Self>, only_without_aux: bool) {
        use std::sync::atomic::Ordering::AcqRel;
        if only_without_aux && self.aux_id().is_some() {
            return;
        }
        if self.primes.lock().unwrap_or_else(PoisonError::into_inner).is_some()
            || self.primes_generating.swap(true, AcqRel)
        {
            return;
        }
        let sessions = Arc::clone(self);
        tokio::spawn(async move {
            let primes = match sessions.primes_fixture.clone() {
                Some(p) => Some(p),
                None => {
                    info!("generating safe primes for aux info in the background");
                    let started = Instant::now();
                    let generated = tokio::task::spawn_blocking(engine::generate_primes).await;
                    info!(seconds = started.elapsed().as_secs_f64(), "safe primes ready");
                    generated.ok()
                }
            };
            if let Some(primes) = primes {
                *sessions.primes.lock().unwrap_or_else(PoisonError::into_inner) = Some(primes);
            }
            sessions.primes_generating.store(false, std::sync::atomic::Ordering::Release);
            sessions.primes_ready.notify_waiters();
        });
    }

    /// Id of the aux info stored here (as `GET /p2p/aux-info` shows it).
    pub fn aux_id(&self) -> Option<String> {
        self.aux_id.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The schemes this node runs.
    pub fn schemes(&self) -> &[Scheme] {
        &self.schemes
    }

    /// Names and schemes of the key shares held here, for heartbeats: the
    /// first [`torcus_contract::registry::MAX_LISTED`] by name (what the
    /// operator takes; more would cost the whole heartbeat).
    pub fn held_keys(&self) -> Vec<torcus_contract::registry::HeldKey> {
        let shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys: Vec<_> = shares
            .iter()
            .map(|(name, held)| torcus_contract::registry::HeldKey {
                name: name.clone(),
                scheme: held.scheme().as_str().to_owned(),
            })
            .collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        keys.truncate(torcus_contract::registry::MAX_LISTED);
        keys
    }

    /// Names and public keys of the keys held here.
    pub fn keys(&self) -> Vec<KeyInfo> {
        let shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys: Vec<_> = shares.iter().map(|(name, share)| key_info(name, share)).collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        keys
    }

    /// Status of a session this node has seen.
    pub fn status(&self, session: &[u8; 32]) -> Option<SessionStatus> {
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner).get(session).cloned()
    }

    /// The presignature pools held here (counts only).
    pub fn presignature_pools(&self) -> PresignaturePools {
        PresignaturePools { pools: self.pools.snapshot() }
    }

    /// Runs the session of `grant` as its initiator: the HTTP API's entry.
    pub async fn initiate(self: &Arc<Self>, signed: SignedGrant, presignature: Offer) -> Result<Outcome, SessionError> {
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
        let _foreground = self.foreground();
        let session = grant.session_id();
        self.set_status(session, SessionStatus::Proposed);
        let mut control = self.open_handshake(session);
        let result = async {
            let mut handshake = InitiatorHandshake::for_grant(&grant, Instant::now() + HANDSHAKE_TIMEOUT);
            let mut offered = self.offer_presignature(&grant, presignature);
            if let Some(taken) = &offered {
                handshake.offer_presignature(taken.id());
            }
            let proposal = Control::Proposal { grant: signed.clone(), presignature: handshake.offered() };
            // In the background: the acks of the parties that answer are
            // taken while a dial to one that does not still waits.
            let others: Vec<u16> = grant.participants.iter().copied().filter(|p| *p != self.me).collect();
            self.send_control_detached(others, session, &proposal, false);
            let started_with = self.handshake(&mut handshake, &mut control, Some(&proposal)).await?;
            // Not started with it: dropped here (counted as discarded).
            let presig = started_with.and_then(|id| offered.take().filter(|taken| taken.id() == id));
            drop(offered);
            self.run(&grant, control, presig).await
        }
        .await;
        self.finish(session, &result);
        result
    }

    /// Starts the presigner: for every key and every signer set this node
    /// leads, it keeps the pool at its target in the background, until
    /// `stop`. Does nothing when pools are off.
    pub fn spawn_presigner(self: &Arc<Self>, stop: CancellationToken) {
        if self.pools.target() == 0 {
            return;
        }
        let this = Arc::clone(self);
        let span = tracing::info_span!("presigner", me = self.me);
        tokio::spawn(
            async move {
                tokio::select! {
                    () = this.presigner() => {}
                    () = stop.cancelled() => {}
                }
            }
            .instrument(span),
        );
    }

    /// Handles one control envelope from the transport (already
    /// authenticated: `env.from` is who sent it).
    pub async fn on_control(self: &Arc<Self>, env: Envelope) {
        let Ok(control) = serde_json::from_slice::<Control>(&env.payload) else {
            self.metrics.dropped_control.inc();
            return;
        };
        match control {
            Control::Proposal { grant, presignature } => {
                let session = grant.grant.session_id();
                // Only proposals of grants the operator signed, from their
                // initiator, are tracked: any other is refused by
                // `participate` and must neither shadow the real one nor
                // fill the table. (Checked before `initiator`, which needs
                // participants.)
                let tracked = grant.authentic(&self.grant_key).is_ok_and(|grant| env.from == grant.initiator());
                if tracked {
                    match self.repeated_proposal(session) {
                        Repeated::First => {}
                        Repeated::AckAgain(ack) => {
                            self.metrics.proposals_repeated.with_label_values(&["acked_again"]).inc();
                            // Not in this loop: the way back to the
                            // initiator may be what lost the first ack.
                            self.send_control_detached(vec![env.from], session, &ack, true);
                            return;
                        }
                        Repeated::Ignore => {
                            self.metrics.proposals_repeated.with_label_values(&["ignored"]).inc();
                            return;
                        }
                    }
                }
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    Arc::clone(&this).participate(env.from, grant, presignature).await;
                    if tracked {
                        this.proposals.lock().unwrap_or_else(PoisonError::into_inner).remove(&session);
                    }
                });
            }
            Control::PresignProposal { session_id, key, path, participants, held } => {
                let this = Arc::clone(self);
                let span = tracing::debug_span!("presign", from = env.from, key = %key, ?path);
                let pool = PoolId { key, path, set: participants };
                tokio::spawn(async move { this.join_presign(env.from, session_id, pool, held).await }.instrument(span));
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

    async fn participate(self: Arc<Self>, from: u16, signed: SignedGrant, offered: Option<[u8; 32]>) {
        let session = signed.grant.session_id();
        let participants = signed.grant.participants.clone();
        if let Err(error) = signed.grant.check() {
            self.metrics.grants_rejected.with_label_values(&[error.reason()]).inc();
            self.refuse(from, session, format!("party {} refused the grant: {error}", self.me)).await;
            return;
        }
        // Checked before the grant is: verifying records its session as
        // used, and a proposal from anyone but the initiator must not burn
        // the session the initiator is about to propose.
        if signed.grant.initiator() != from {
            let reason = format!("proposal came from party {from}, but the initiator is {}", signed.grant.initiator());
            self.metrics.grants_rejected.with_label_values(&["not_initiator"]).inc();
            self.refuse(from, session, reason).await;
            return;
        }
        let grant = match self.verify(&signed) {
            Ok(grant) => grant.clone(),
            Err(error) => {
                warn!(from, %error, "refused a proposal");
                let reason = format!("party {} refused the grant: {error}", self.me);
                self.refuse(from, session, reason).await;
                return;
            }
        };
        if let Err(error) = self.precheck(&grant) {
            let reason = format!("party {}: {error}", self.me);
            self.refuse(from, session, reason).await;
            return;
        }
        let _foreground = self.foreground();
        self.set_status(session, SessionStatus::Proposed);
        let mut control = self.open_handshake(session);
        let mut handshake = ParticipantHandshake::new(&grant, self.me, Instant::now() + HANDSHAKE_TIMEOUT);
        // Taken out of the pool now, before acking: from here on no other
        // session can have it, whatever this one turns into.
        let mut reserved = offered.and_then(|id| self.reserve_presignature(&grant, &id));
        let ack = handshake.ack_with(reserved.as_ref().map(Taken::id));
        if let Some(pending) = self.proposals.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&session) {
            pending.ack = Some(ack.clone());
        }
        self.send_control(from, session, &ack).await;
        let result = async {
            let started_with = self.handshake(&mut handshake, &mut control, None).await?;
            let presig = match (started_with, reserved.take()) {
                // The full protocol; a presignature set aside is dropped.
                (None, _) => None,
                (Some(id), Some(taken)) if taken.id() == id => Some(taken),
                (Some(_), _) => {
                    let reason = format!("party {} does not hold the presignature the session started with", self.me);
                    let abort =
                        Control::Abort { session_id: session, from: self.me, reason: reason.clone(), accused: None };
                    self.broadcast_control(&participants, session, &abort).await;
                    return Err(SessionError::Aborted(reason));
                }
            };
            self.run(&grant, control, presig).await
        }
        .await;
        self.finish(session, &result);
    }

    /// Runs the protocol of a started grant session, with `presig` when
    /// Start named one (signing only).
    async fn run(
        self: &Arc<Self>,
        grant: &Grant,
        control: mpsc::Receiver<(u16, Control)>,
        presig: Option<Taken<Presig>>,
    ) -> Result<Outcome, SessionError> {
        self.set_status(grant.session_id(), SessionStatus::Running);
        let (timeout, kind) = match &grant.kind {
            GrantKind::Keygen { .. } | GrantKind::FrostKeygen { .. } => (KEYGEN_TIMEOUT, "keygen"),
            // A signing session and a presigning one share the limit.
            GrantKind::Sign { .. } | GrantKind::FrostSign { .. } => {
                (torcus_contract::session::sign_deadline(grant.participants.len()), "sign")
            }
        };
        let protocol = {
            let (sessions, grant) = (Arc::clone(self), grant.clone());
            engine::on_own_thread(async move { sessions.protocol(&grant, presig).await })
        };
        self.run_started(grant.session_id(), &grant.participants, kind, timeout, protocol, control).await
    }

    /// Runs `protocol` for a started session among `participants`; an
    /// Abort from any of them, or the timeout, ends it, and a local failure
    /// is sent to them as an Abort.
    async fn run_started<O>(
        &self,
        session: [u8; 32],
        participants: &[u16],
        kind: &'static str,
        timeout: Duration,
        protocol: impl Future<Output = Result<O, SessionError>>,
        mut control: mpsc::Receiver<(u16, Control)>,
    ) -> Result<O, SessionError> {
        let started = Instant::now();
        let aborted = async {
            // An Abort that accuses this node is false (this node sent what
            // its protocol computed) or the accuser's own doing. The session
            // is over either way, but this node's protocol runs on for
            // `ACCUSED_GRACE`: when its own checks fail meanwhile (the
            // library's, or on a message the accuser sent before), that
            // failure names who broke the session; else the Abort ends it.
            let mut against_me: Option<(u16, String, tokio::time::Instant)> = None;
            loop {
                let received = match &against_me {
                    Some((.., until)) => tokio::time::timeout_at(*until, control.recv()).await.ok(),
                    None => Some(control.recv().await),
                };
                match received {
                    Some(Some((from, Control::Abort { reason, accused, .. })))
                        if participants.contains(&from) && from != self.me =>
                    {
                        if accused != Some(self.me) {
                            break (from, reason, accused);
                        }
                        if against_me.is_none() {
                            warn!(from, %reason, "a participant accuses this node; its own checks run on a moment");
                            against_me = Some((from, reason, tokio::time::Instant::now() + ACCUSED_GRACE));
                        }
                    }
                    Some(Some(_)) => {}
                    // Closed: nothing more will come; the grace still runs.
                    Some(None) => match &against_me {
                        Some((.., until)) => tokio::time::sleep_until(*until).await,
                        None => std::future::pending::<()>().await,
                    },
                    None => {}
                }
                if let Some((from, reason, until)) = &against_me
                    && tokio::time::Instant::now() >= *until
                {
                    break (*from, reason.clone(), Some(self.me));
                }
            }
        };
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, protocol) => r.unwrap_or(Err(SessionError::Timeout(timeout))),
            (party, reason, accused) = aborted => Err(SessionError::AbortedBy { party, reason, accused }),
        };
        // A message that did not decode, or a failed send, ends the
        // protocol early: say who broke it, rather than what the protocol
        // made of it.
        let accused = self.router.take_accusation(&session);
        let failure = self.router.take_failure(&session);
        let result = match (result, accused, failure) {
            // A failed send explains silence better than silence does.
            (Err(error), Some(accused), failure) if !error.is_abort() && (!accused.silent || failure.is_none()) => {
                let engine::Accusation { party, reason, silent } = accused;
                Err(if silent {
                    SessionError::Silent { party, reason }
                } else {
                    SessionError::Misbehaved { party, reason }
                })
            }
            (Err(error), _, Some((party, reason))) if !error.is_abort() => {
                Err(SessionError::Unreachable { party, reason })
            }
            (result, ..) => result,
        };
        if let Err(error) = &result
            && !error.is_abort()
        {
            // Named when this node saw it itself; an Abort it received
            // ended the session already.
            let accused = error.fault().filter(|f| f.accuser.is_none()).map(|f| f.party);
            let abort = Control::Abort { session_id: session, from: self.me, reason: error.to_string(), accused };
            self.broadcast_control(participants, session, &abort).await;
        }
        self.metrics.session_duration.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
        result
    }

    async fn protocol(self: &Arc<Self>, grant: &Grant, presig: Option<Taken<Presig>>) -> Result<Outcome, SessionError> {
        let eid = grant.execution_id();
        let session = grant.session_id();
        match &grant.kind {
            GrantKind::Keygen { key, aux_info, supersedes } => {
                let n = u16::try_from(grant.participants.len()).unwrap_or(u16::MAX);
                let aux = self.aux_info(grant, n, aux_info.as_deref()).await?;
                let net = self.net(session, grant.participants.clone(), KEYGEN_IDLE_TIMEOUT);
                let core = engine::keygen(&eid, n, self.threshold, net).await?;
                let share = engine::complete(core, aux)?;
                self.keep_new_key(key, Held::Ecdsa(Arc::new(share)), supersedes)
            }
            GrantKind::FrostKeygen { key, scheme, supersedes } => {
                // No aux info, no primes: FROST needs no Paillier keys.
                let n = u16::try_from(grant.participants.len()).unwrap_or(u16::MAX);
                let net = self.net(session, grant.participants.clone(), KEYGEN_IDLE_TIMEOUT);
                let share = engine::frost::keygen(*scheme, &eid, n, self.threshold, net).await?;
                self.keep_new_key(key, Held::Frost(Arc::new(share)), supersedes)
            }
            GrantKind::FrostSign { key, message, derivation_path, .. } => {
                let share = self.frost_share(key, grant.kind.scheme())?;
                let net = self.signing_net(grant);
                let signed = engine::frost::sign(&share, message.signed_bytes(), derivation_path, net).await?;
                Ok(Outcome::FrostSignature(FrostSignatureOut {
                    scheme: share.scheme(),
                    signature: hex::encode(signed.signature),
                    public_key: hex::encode(signed.public_key),
                }))
            }
            GrantKind::Sign { key, message, derivation_path } => {
                let share = self.share(key)?;
                let net = self.signing_net(grant);
                let (signature, presigned) = match (presig, message) {
                    (Some(taken), SignMessage::Payload { hash, payload, .. }) => {
                        self.metrics.presignatures_used.inc();
                        let payload = engine::Payload { hash: *hash, bytes: payload };
                        (engine::sign_presigned(taken.consume(), &share, payload, derivation_path, net).await?, true)
                    }
                    // Never offered, never reserved for a digest (see
                    // `offer_presignature`); dropped unused if it were.
                    (Some(_), SignMessage::Digest { .. } | SignMessage::Raw { .. }) => {
                        return Err(SessionError::Aborted("a presignature never signs a raw digest".into()));
                    }
                    (None, message) => {
                        (engine::sign(&eid, &share, engine_message(message)?, derivation_path, net).await?, false)
                    }
                };
                let digest = message.digest().ok_or_else(|| SessionError::Aborted("ECDSA signs a digest".into()))?;
                Ok(Outcome::Signature(signature_out(&share, &digest, derivation_path, &signature, presigned)?))
            }
        }
    }

    /// Stores the share of a new key and holds it; a share of the key held
    /// already is set aside if the grant supersedes its public key, and
    /// refused otherwise.
    fn keep_new_key(&self, key: &str, held: Held, supersedes: &[String]) -> Result<Outcome, SessionError> {
        let bytes = held.encode()?;
        let KeyInfo { public_key, chain_code, scheme, .. } = key_info(key, &held);
        // Checked again now, not only before the ack: a keygen of the same
        // key may have ended here in the meantime.
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = shares.get(key) {
            // Never a share of another scheme, whatever the grant names:
            // that is another key, not an earlier run of this one.
            if old.scheme() != scheme {
                return Err(SessionError::WrongScheme { key: key.to_owned(), held: old.scheme(), wanted: scheme });
            }
            let old_key = key_info(key, old).public_key;
            if !supersedes.contains(&old_key) {
                return Err(SessionError::KeyExists(key.to_owned()));
            }
            // Set aside, never deleted: an operator mistake stays
            // recoverable by hand.
            let old_bytes = old.encode()?;
            let aside = format!("superseded-{key}-{}-{}", &old_key[..16], torcus_contract::unix_now());
            self.store.put(&aside, &old_bytes)?;
            warn!(key, superseded = %old_key, "set aside the share of an incomplete earlier keygen");
        }
        self.store.put(&format!("key-{key}"), &bytes)?;
        shares.insert(key.to_owned(), held);
        drop(shares);
        info!(key, %scheme, %public_key, "generated a key");
        self.presigner_wake.notify_one();
        Ok(Outcome::Keygen { key: key.to_owned(), scheme, public_key, chain_code })
    }

    /// Aux info: the stored one the grant names, or (the grant names
    /// none) new aux info generated by all participants in a session of its
    /// own, derived from the keygen grant, and stored under that session's
    /// id. Existing shares keep the aux info they were completed with.
    async fn aux_info(self: &Arc<Self>, grant: &Grant, n: u16, wanted: Option<&str>) -> Result<Aux, SessionError> {
        if let Some(id) = wanted {
            let bytes = self.store.get(AUX_SHARE)?.ok_or_else(|| SessionError::NoSuchAux(id.to_owned()))?;
            let stored: StoredAux = serde_json::from_slice(&bytes).map_err(|e| SessionError::Corrupt(e.to_string()))?;
            return if stored.id == id { Ok(stored.aux) } else { Err(SessionError::NoSuchAux(id.to_owned())) };
        }
        let primes = loop {
            let notified = self.primes_ready.notified();
            if let Some(p) = self.primes.lock().unwrap_or_else(PoisonError::into_inner).clone() {
                break p;
            }
            self.prepare_primes(false);
            notified.await;
        };
        let mut eid = grant.execution_id();
        eid.extend_from_slice(b"/aux");
        let session: [u8; 32] =
            Sha256::new().chain_update(b"torcus-aux:").chain_update(grant.session_id()).finalize().into();
        let aux = engine::aux_info(&eid, n, primes, self.net(session, grant.participants.clone(), KEYGEN_IDLE_TIMEOUT))
            .await?;
        let stored = StoredAux { format: AUX_FORMAT.to_owned(), id: hex::encode(session), aux };
        let bytes = Zeroizing::new(serde_json::to_vec(&stored).map_err(|e| SessionError::Corrupt(e.to_string()))?);
        self.store.put(AUX_SHARE, &bytes)?;
        *self.aux_id.lock().unwrap_or_else(PoisonError::into_inner) = Some(stored.id);
        // Used: the next new aux info gets primes of its own.
        *self.primes.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(stored.aux)
    }

    /// The network of a signing session (ECDSA or FROST), with a test
    /// build's tampering hook in it when one is set.
    fn signing_net(&self, grant: &Grant) -> engine::SessionNet {
        let idle = torcus_contract::session::sign_idle_deadline(grant.participants.len());
        #[cfg_attr(not(feature = "test-hooks"), expect(unused_mut, reason = "the hook is compiled out"))]
        let mut net = self.net(grant.session_id(), grant.participants.clone(), idle);
        #[cfg(feature = "test-hooks")]
        if let Some(hostile) = self.hostile.get() {
            hostile.wrap(&mut net);
        }
        net
    }

    /// The session's network. Between two messages a party computes at
    /// most one round: `idle` is short for (pre)signing, long for aux info's
    /// proofs on a slow machine.
    fn net(&self, session: [u8; 32], participants: Vec<u16>, idle: Duration) -> engine::SessionNet {
        let mut net = self.router.session(Arc::clone(&self.transport), session, self.me, participants);
        net.idle_timeout = Some(idle);
        net
    }

    fn held(&self, key: &str) -> Result<Held, SessionError> {
        self.shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .ok_or_else(|| SessionError::UnknownKey(key.into()))
    }

    /// The ECDSA share of `key`; an error if the key is of another scheme.
    fn share(&self, key: &str) -> Result<Arc<Share>, SessionError> {
        match self.held(key)? {
            Held::Ecdsa(share) => Ok(share),
            Held::Frost(share) => {
                Err(SessionError::WrongScheme { key: key.into(), held: share.scheme(), wanted: Scheme::EcdsaSecp256k1 })
            }
        }
    }

    /// The FROST share of `key`, which must be of `scheme`.
    fn frost_share(&self, key: &str, scheme: Scheme) -> Result<Arc<FrostShare>, SessionError> {
        match self.held(key)? {
            Held::Frost(share) if share.scheme() == scheme => Ok(share),
            held => Err(SessionError::WrongScheme { key: key.into(), held: held.scheme(), wanted: scheme }),
        }
    }

    fn verify<'g>(&self, signed: &'g SignedGrant) -> Result<&'g Grant, SessionError> {
        let now = self.now();
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
        let scheme = grant.kind.scheme();
        if !self.schemes.contains(&scheme) {
            return Err(SessionError::Aborted(format!("this build of the node does not run {scheme}")));
        }
        match &grant.kind {
            GrantKind::Keygen { key, aux_info, supersedes } => {
                if let Some(old) = self.shares.lock().unwrap_or_else(PoisonError::into_inner).get(key) {
                    if old.scheme() != scheme {
                        return Err(SessionError::WrongScheme { key: key.clone(), held: old.scheme(), wanted: scheme });
                    }
                    if !supersedes.contains(&key_info(key, old).public_key) {
                        return Err(SessionError::KeyExists(key.clone()));
                    }
                }
                match aux_info {
                    Some(id) if self.aux_id().as_deref() != Some(id.as_str()) => {
                        Err(SessionError::NoSuchAux(id.clone()))
                    }
                    _ => Ok(()),
                }
            }
            GrantKind::FrostKeygen { key, supersedes, .. } => {
                match self.shares.lock().unwrap_or_else(PoisonError::into_inner).get(key) {
                    Some(old) if old.scheme() != scheme => {
                        Err(SessionError::WrongScheme { key: key.clone(), held: old.scheme(), wanted: scheme })
                    }
                    Some(old) if !supersedes.contains(&key_info(key, old).public_key) => {
                        Err(SessionError::KeyExists(key.clone()))
                    }
                    _ => Ok(()),
                }
            }
            GrantKind::Sign { key, .. } => self.share(key).map(|_| ()),
            GrantKind::FrostSign { key, scheme, .. } => {
                // FROST signs with exactly the threshold: more signers
                // would not make a signature, fewer cannot.
                if grant.participants.len() != usize::from(self.threshold) {
                    return Err(SessionError::Aborted(format!(
                        "a FROST signature takes exactly {} signers, the grant names {}",
                        self.threshold,
                        grant.participants.len()
                    )));
                }
                self.frost_share(key, *scheme).map(|_| ())
            }
        }
    }

    /// Drives either side of a handshake to its end: feeds it this
    /// session's control messages and the time, and sends what it says to.
    /// Returns the presignature the session starts with (`None`: the full
    /// protocol); an Abort from a participant, or the deadline, ends the
    /// session (the deadline with an Abort to the others saying what was
    /// missing). `resend`, the initiator's proposal, goes again every
    /// [`PROPOSAL_RESEND`] to the parties that have not acked.
    async fn handshake(
        &self,
        handshake: &mut impl Handshake,
        control: &mut mpsc::Receiver<(u16, Control)>,
        resend: Option<&Control>,
    ) -> Result<Option<[u8; 32]>, SessionError> {
        let mut next_resend = Instant::now() + PROPOSAL_RESEND;
        loop {
            let deadline = handshake.deadline();
            let wake = if resend.is_some() { deadline.min(next_resend) } else { deadline };
            let step = match tokio::time::timeout_at(wake.into(), control.recv()).await {
                Ok(Some((from, message))) => handshake.on_control(from, message),
                Err(_) if Instant::now() < deadline => {
                    let awaiting = handshake.awaiting();
                    if let Some(proposal) = resend.filter(|_| !awaiting.is_empty()) {
                        let resent = u64::try_from(awaiting.len()).unwrap_or(u64::MAX);
                        self.metrics.proposals_repeated.with_label_values(&["resent"]).inc_by(resent);
                        // In the background: a dial to a party that does not
                        // answer must not hold up the acks of the others.
                        self.send_control_detached(awaiting, handshake.session(), proposal, true);
                    }
                    next_resend = Instant::now() + PROPOSAL_RESEND;
                    continue;
                }
                // Closed (the node is shutting down) counts as the deadline.
                Ok(None) | Err(_) => match handshake.on_time(Instant::now().max(deadline)) {
                    HandshakeStep::Waiting => {
                        HandshakeStep::TimedOut { send: None, reason: "handshake timed out".into() }
                    }
                    step => step,
                },
            };
            match step {
                HandshakeStep::Waiting => {}
                HandshakeStep::Started { send, presignature } => {
                    if let Some(start) = send {
                        self.broadcast_control(handshake.participants(), handshake.session(), &start).await;
                    }
                    return Ok(presignature);
                }
                HandshakeStep::AbortedBy { party, reason, accused } => {
                    return Err(SessionError::AbortedBy { party, reason, accused });
                }
                HandshakeStep::TimedOut { send, reason } => {
                    if let Some(abort) = send {
                        self.broadcast_control(handshake.participants(), handshake.session(), &abort).await;
                    }
                    return Err(SessionError::Aborted(reason));
                }
            }
        }
    }

    /// TEST ONLY: the clock grants are checked by runs `offset` seconds off
    /// the system clock (a node whose clock drifted).
    #[cfg(feature = "test-hooks")]
    pub fn set_clock_offset(&self, offset: i64) {
        warn!(offset, "TEST HOOK: this node's grant clock runs off the system clock");
        self.clock_offset.store(offset, Ordering::Relaxed);
    }

    /// The time grants are checked at: the system clock (unix seconds).
    fn now(&self) -> u64 {
        let now = torcus_contract::unix_now();
        #[cfg(feature = "test-hooks")]
        let now = now.saturating_add_signed(self.clock_offset.load(Ordering::Relaxed));
        now
    }

    /// TEST ONLY: from now on, this node tampers with what it sends in
    /// every signing session as `mode` says (a compromised node, for the
    /// tests that the others name it and get by without it). Set once.
    #[cfg(feature = "test-hooks")]
    pub fn misbehave(&self, mode: crate::hostile::Misbehaviour) {
        let _ = self.hostile.set(crate::hostile::Hostile::new(mode));
    }

    /// The presignature a signing grant's initiator offers, if the grant can
    /// use one at all and `offer` allows one: only for a payload the nodes
    /// hash themselves (a raw digest never meets a presignature: whoever
    /// knows R could pick a digest that forges, eprint 2021/1330 §1.1.2),
    /// and only one made for the grant's key, derivation path and signer set
    /// (the path fixed before presigning: a path set afterwards would leave
    /// about 85 bits of security, Groth–Shoup).
    fn offer_presignature(&self, grant: &Grant, offer: Offer) -> Option<Taken<Presig>> {
        let GrantKind::Sign { key, derivation_path, message } = &grant.kind else {
            return None;
        };
        if !message.is_payload() || self.pools.target() == 0 || grant.participants.len() != usize::from(self.threshold)
        {
            return None;
        }
        let pool = PoolId::new(key, derivation_path, &grant.participants);
        // The issuer reserved this one for this session and others of the
        // same set for theirs: taking any other could take theirs.
        match offer {
            Offer::None => return None,
            Offer::Id(id) => return self.pools.take(&pool, &id),
            Offer::Any => {}
        }
        // Without the issuer's choice (a node driven directly, or a grant
        // sent again after an operator restart): members of a set may
        // initiate sessions for it at the same time; each first offers the
        // presignatures whose id falls to it, so two initiators rarely offer
        // the same one (which only one session could then use, the other
        // running the full protocol).
        let position = grant.participants.iter().position(|p| *p == self.me)?;
        let members = grant.participants.len();
        self.pools.take_oldest_preferring(&pool, |id| usize::from(id[0]) % members == position)
    }

    /// A member's side of an offer: takes presignature `id` of the grant's
    /// key, path and signer set out of its pool, if it holds it and the
    /// grant's message is a payload. A member checks this itself: an
    /// initiator that offers a presignature for a raw digest gets no ack
    /// holding one, and the session runs the full protocol.
    fn reserve_presignature(&self, grant: &Grant, id: &[u8; 32]) -> Option<Taken<Presig>> {
        let GrantKind::Sign { key, derivation_path, message } = &grant.kind else {
            return None;
        };
        if !message.is_payload() || grant.participants.len() != usize::from(self.threshold) {
            return None;
        }
        self.pools.take(&PoolId::new(key, derivation_path, &grant.participants), id)
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
                // One line per session: the durable record of what this
                // node's share took part in (the counters restart with it).
                info!(session = %hex::encode(session), kind = outcome_kind(outcome), "session completed");
                self.metrics.sessions.with_label_values(&[outcome_kind(outcome), "completed"]).inc();
                SessionStatus::Completed { outcome: outcome.clone() }
            }
            Err(error) => {
                warn!(%error, "session failed");
                self.metrics.sessions.with_label_values(&["any", error.reason()]).inc();
                let fault = error.fault();
                SessionStatus::Failed {
                    reason: error.to_string(),
                    blamed: fault.map(|f| f.party),
                    accuser: fault.and_then(|f| f.accuser),
                }
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

    /// Sends `control` to every other participant, to all at once: a party
    /// that does not answer costs the others nothing.
    async fn broadcast_control(&self, participants: &[u16], session: [u8; 32], control: &Control) {
        let sends = participants.iter().filter(|p| **p != self.me).map(|&to| self.send_control(to, session, control));
        futures::future::join_all(sends).await;
    }

    /// Sends `control` to each of `to` in tasks of their own; `again` says
    /// it was sent before (a failure is then only logged at debug level).
    /// The tasks are not cancelled: a send cut in the middle of a frame
    /// would break the connection it was on. One that ends after its
    /// session did is harmless: a transport delivers in order per peer, so
    /// an Abort sent after it arrives after it.
    fn send_control_detached(&self, to: Vec<u16>, session: [u8; 32], control: &Control, again: bool) {
        let Ok(payload) = serde_json::to_vec(control) else { return };
        for to in to {
            let transport = Arc::clone(&self.transport);
            let env = Envelope {
                session,
                channel: Channel::Control,
                from: self.me,
                to: Some(to),
                seq: 0,
                payload: payload.clone(),
            };
            tokio::spawn(async move {
                match transport.send(to, env).await {
                    Ok(()) => {}
                    Err(error) if again => tracing::debug!(to, %error, "could not send a control message again"),
                    Err(error) => warn!(to, %error, "could not send a control message"),
                }
            });
        }
    }

    /// What to do with a proposal of `session` from its initiator: answer
    /// it (the first), send the ack again (a repeat of one being answered),
    /// or drop it (a repeat of one whose ack is not out yet or was sent
    /// again less than [`ACK_AGAIN_EVERY`] ago, of a session this node has
    /// already run, or one too many at once).
    fn repeated_proposal(&self, session: [u8; 32]) -> Repeated {
        let mut proposals = self.proposals.lock().unwrap_or_else(PoisonError::into_inner);
        // Statuses first: a session ends (its status set) a moment before
        // its proposal is forgotten, and an ended one is never acked again.
        let seen = self.statuses.lock().unwrap_or_else(PoisonError::into_inner).get(&session).cloned();
        if matches!(seen, Some(SessionStatus::Completed { .. } | SessionStatus::Failed { .. })) {
            return Repeated::Ignore;
        }
        if let Some(pending) = proposals.get_mut(&session) {
            let now = Instant::now();
            let due = pending.sent_again.is_none_or(|at| now.duration_since(at) >= ACK_AGAIN_EVERY);
            return match &pending.ack {
                Some(ack) if due => {
                    pending.sent_again = Some(now);
                    Repeated::AckAgain(Box::new(ack.clone()))
                }
                _ => Repeated::Ignore,
            };
        }
        if seen.is_some() || proposals.len() >= MAX_PENDING_PROPOSALS {
            return Repeated::Ignore;
        }
        proposals.insert(session, Pending::default());
        Repeated::First
    }

    /// Tells party `to` that this node will not take part in `session`, and why.
    pub(super) async fn refuse(&self, to: u16, session: [u8; 32], reason: String) {
        let abort = Control::Abort { session_id: session, from: self.me, reason, accused: None };
        self.send_control(to, session, &abort).await;
    }

    async fn send_control(&self, to: u16, session: [u8; 32], control: &Control) {
        let payload = match serde_json::to_vec(control) {
            Ok(p) => p,
            Err(_) => return,
        };
        let env = Envelope { session, channel: Channel::Control, from: self.me, to: Some(to), seq: 0, payload };
        if let Err(error) = self.transport.send(to, env).await {
            warn!(to, %error, "could not send a control message");
        }
    }
}

/// What `GET /p2p/keys` says of a share: public material only.
fn key_info(name: &str, held: &Held) -> KeyInfo {
    let (public_key, chain_code) = match held {
        Held::Ecdsa(share) => (share.shared_public_key.to_bytes(true).to_vec(), engine::chain_code(share)),
        Held::Frost(share) => (share.public_key(), share.chain_code()),
    };
    KeyInfo {
        name: name.to_owned(),
        scheme: held.scheme(),
        public_key: hex::encode(public_key),
        chain_code: chain_code.map(hex::encode),
    }
}

fn outcome_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Keygen { .. } => "keygen",
        Outcome::FrostSignature(_) => "sign",
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

/// The engine's view of a grant's message.
fn engine_message(message: &SignMessage) -> Result<engine::Message<'_>, SessionError> {
    match message {
        SignMessage::Payload { hash, payload, .. } => {
            Ok(engine::Message::Payload(engine::Payload { hash: *hash, bytes: payload }))
        }
        SignMessage::Digest { digest } => Ok(engine::Message::Digest(digest)),
        // `Grant::check` keeps raw messages out of ECDSA grants already.
        SignMessage::Raw { .. } => Err(SessionError::Aborted("ECDSA does not sign a raw message".into())),
    }
}

/// r, s, recovery id and DER of a signature, checked against the key.
fn signature_out(
    share: &Share,
    digest: &[u8; 32],
    path: &[u32],
    signature: &engine::Signature,
    presigned: bool,
) -> Result<SignatureOut, SessionError> {
    let public = engine::public_key_bytes(share, path)?;
    let (r, s) = engine::signature_bytes(signature);
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
        presigned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreKey;

    #[test]
    fn aux_info_sealed_under_replaced_keys_is_none_but_a_key_share_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shares");
        let before = ShareStore::open(&dir, StoreKey::generate().unwrap()).unwrap();
        before.put(AUX_SHARE, b"{\"format\":\"x\"}").unwrap();
        before.put("key-default", b"share").unwrap();
        assert!(stored_aux(&before).unwrap().is_some());
        let after = ShareStore::open(&dir, StoreKey::generate().unwrap()).unwrap();
        assert!(stored_aux(&after).unwrap().is_none());
        assert!(matches!(after.get("key-default"), Err(crate::store::Error::Decrypt { .. })));
        // An unreadable folder is still an error, not "no aux info".
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(dir.join(format!("{AUX_SHARE}.share"))).unwrap();
        assert!(stored_aux(&after).is_err());
    }
}
