//! The protocol engine: CGGMP24 threshold ECDSA on secp256k1 (the `cggmp24`
//! crate, on the GMP backend), run over any message channel. This is the only
//! module of the node that names the library.
//!
//! Each protocol run is a *session*: an execution id derived from the grant
//! that authorised it, the ordered list of parties taking part, and a pair of
//! channels carrying [`Envelope`]s. The engine never touches a socket; a
//! transport (QUIC, TCP, relay, or the in-memory hub in tests) moves the
//! envelopes, and a test can drive a whole cluster in one process.
//!
//! Nothing here switches off a check of the library: reliable broadcast is
//! enforced, every proof is verified, and the library's
//! `insecure-assume-preimage-known` feature is never enabled. What may be
//! signed, and how, is in the types:
//!
//! - [`Payload`]: bytes the nodes hash themselves (SHA-256, Keccak-256 or
//!   Bitcoin's double SHA-256). The only thing a presignature can sign
//!   ([`sign_presigned`] takes nothing else), and signed as the library's
//!   `DataToSign`, which it builds from the preimage.
//! - [`Message::Digest`]: a 32-byte digest chosen by the requester, whose
//!   preimage nobody here knows. Only the full interactive protocol
//!   ([`sign`]) signs it, as the library's `PrehashedDataToSign`: with a
//!   presignature, whoever knows its public nonce R (every member of the
//!   signer set) could choose a digest that turns the signature into one on
//!   a message of their choice (eprint 2021/1330 §1.1.2, RUSTSEC-2025-0127).
//!
//! A [`Presig`] is made for one key, one signer set and one derivation path,
//! fixed on the builder before the presigning protocol runs; setting a path
//! on a presignature afterwards (which cggmp21 allowed) lowers security to
//! about 85 bits, and the library no longer offers it. The presignature's
//! public data travels with it, and every partial signature is checked
//! against it before the parts are combined.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use cggmp24::generic_ec::coords::AlwaysHasAffineX;
use cggmp24::key_share::AuxInfo;
use cggmp24::round_based::{Incoming, MessageDestination, MessageType, MpcParty, Outgoing, ProtocolMessage};
use cggmp24::signing::PresignaturePublicData;
use cggmp24::{
    DataToSign, ExecutionId, IncompleteKeyShare, KeyShare, PartialSignature, PregeneratedPrimes, PrehashedDataToSign,
    Presignature,
};
use futures::StreamExt;
use rand_core::OsRng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2_v010::Digest as _;
use tokio::sync::mpsc;
use torcus_contract::HashAlgorithm;
use zeroize::Zeroizing;

pub mod frost;
#[cfg(feature = "test-util")]
pub mod raw;

/// The curve of every Torcus key.
pub type Curve = cggmp24::supported_curves::Secp256k1;
/// Security level of the Paillier and ZK parameters (128-bit).
pub type Level = cggmp24::security_level::SecurityLevel128;
/// A complete key share (core share plus aux info).
pub type Share = KeyShare<Curve, Level>;
/// A key share before aux info is attached.
pub type CoreShare = IncompleteKeyShare<Curve>;
/// Aux info (Paillier keys and ring-Pedersen parameters) of one party.
pub type Aux = AuxInfo<Level>;
/// Pregenerated safe primes for aux info (four 1536-bit primes per party).
pub type Primes = PregeneratedPrimes<Level>;
/// An ECDSA signature (s normalised to the lower half).
pub type Signature = cggmp24::Signature<Curve>;

/// Tag of the key shares this engine writes. Shares written by the
/// `cggmp21`-based releases carry none: their aux info has another shape.
pub const SHARE_FORMAT: &str = "torcus-key-share/cggmp24";

pub use torcus_contract::envelope::{Channel, Envelope};

/// Why a protocol run failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Key generation failed (a party misbehaved or the network broke).
    #[error("keygen: {0}")]
    Keygen(#[from] cggmp24::KeygenError),
    /// Aux info generation failed.
    #[error("aux info: {0}")]
    AuxInfo(#[from] cggmp24::KeyRefreshError),
    /// Signing or presigning failed.
    #[error("signing: {0}")]
    Signing(#[from] cggmp24::SigningError),
    /// Parts do not make a valid key share.
    #[error("invalid key share: {0}")]
    InvalidShare(String),
    /// The derivation path cannot be used (hardened index or HD disabled).
    #[error("derivation path: {0}")]
    DerivationPath(String),
    /// This party is not among the session's parties.
    #[error("party {0} is not in this session")]
    NotAParticipant(u16),
    /// A presignature was offered for a session it was not made for.
    #[error("the presignature was made for {made_for}, not for {asked}")]
    PresignatureMismatch {
        /// Signer set and path the presignature is bound to.
        made_for: String,
        /// What the session asked of it.
        asked: String,
    },
    /// A party's partial signature does not match its commitment in the
    /// presignature's public data.
    #[error("party {0} sent a partial signature that does not match the presignature")]
    BadPartial(u16),
    /// Partial signatures did not combine into a valid signature.
    #[error("partial signatures do not combine into a valid signature")]
    Combine,
    /// The library aborted the run on a party's message that failed its
    /// checks (a proof that does not verify, a broadcast that differs).
    #[error("party {party} failed the protocol's checks: {reason}")]
    Blamed {
        /// The party's keygen index.
        party: u16,
        /// The library's error, with its causes.
        reason: String,
    },
    /// Exchanging partial signatures failed.
    #[error("exchanging partial signatures: {0}")]
    Delivery(#[from] DeliveryError),
    /// FROST signing failed, with nobody to blame.
    #[error("{0}")]
    Frost(String),
}

/// Why stored key material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ShareFormatError {
    /// A share written by a `cggmp21`-based release (Torcus 0.1 before the
    /// move to CGGMP24): its aux info has another shape, and nothing is
    /// reinterpreted.
    #[error(
        "this is a key share written by a Torcus release built on cggmp21 (CGGMP'21); this release runs CGGMP24, \
         whose aux info has another shape, and it does not reinterpret old shares. To keep signing with this key, \
         run the previous Torcus release for this cluster; to move to this one, generate a new key (a new \
         MpcCluster, or a new name in spec.keys) and move what the old key controls to it. The share is left \
         untouched on the volume"
    )]
    Cggmp21,
    /// Not a key share of any known format.
    #[error("not a key share: {0}")]
    Unreadable(String),
}

/// A hashed payload: the only message a presignature may sign. The nodes
/// hash `bytes` themselves; nobody hands the engine a digest for it.
#[derive(Clone, Copy, Debug)]
pub struct Payload<'a> {
    /// How the payload is hashed.
    pub hash: HashAlgorithm,
    /// The payload.
    pub bytes: &'a [u8],
}

impl Payload<'_> {
    /// The 32-byte digest that is signed (big-endian, before reduction).
    pub fn digest(&self) -> [u8; 32] {
        match self.hash {
            HashAlgorithm::Sha256 => sha2_v010::Sha256::digest(self.bytes).into(),
            HashAlgorithm::Keccak256 => sha3_v010::Keccak256::digest(self.bytes).into(),
            HashAlgorithm::Sha256d => sha2_v010::Sha256::digest(sha2_v010::Sha256::digest(self.bytes)).into(),
        }
    }

    /// The library's type for a message whose preimage is known: it builds
    /// the scalar from the preimage itself.
    fn data_to_sign(&self) -> DataToSign<Curve> {
        match self.hash {
            HashAlgorithm::Sha256 => DataToSign::digest::<sha2_v010::Sha256>(self.bytes),
            HashAlgorithm::Keccak256 => DataToSign::digest::<sha3_v010::Keccak256>(self.bytes),
            HashAlgorithm::Sha256d => {
                DataToSign::from_digest(sha2_v010::Sha256::new_with_prefix(sha2_v010::Sha256::digest(self.bytes)))
            }
        }
    }
}

/// What the full signing protocol signs.
#[derive(Clone, Copy, Debug)]
pub enum Message<'a> {
    /// A payload the nodes hash themselves.
    Payload(Payload<'a>),
    /// A requester's 32-byte digest, preimage unknown.
    Digest(&'a [u8; 32]),
}

impl Message<'_> {
    /// The 32-byte digest that is signed.
    pub fn digest(&self) -> [u8; 32] {
        match self {
            Self::Payload(payload) => payload.digest(),
            Self::Digest(digest) => **digest,
        }
    }
}

/// A presignature, usable for exactly one signature: its secret part, its
/// public data (to check the other signers' partial signatures), and what it
/// is bound to. Never persisted, never cloned, never printed.
pub struct Presig {
    secret: Presignature<Curve>,
    public: PresignaturePublicData<Curve>,
    /// The signer set (keygen indices, in protocol order) that made it.
    parties: Vec<u16>,
    /// The derivation path it was made for, fixed before it existed.
    path: Vec<u32>,
}

impl std::fmt::Debug for Presig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presig").field("parties", &self.parties).field("path", &self.path).finish_non_exhaustive()
    }
}

impl Presig {
    /// The signer set that made it.
    pub fn parties(&self) -> &[u16] {
        &self.parties
    }

    /// The derivation path it is bound to.
    pub fn path(&self) -> &[u32] {
        &self.path
    }
}

/// A session's view of the network: messages in, messages out.
#[derive(Debug)]
pub struct SessionNet {
    /// Session id stamped on every outgoing envelope.
    pub session: [u8; 32],
    /// This party's keygen index.
    pub me: u16,
    /// Keygen indices of the parties, in protocol order (position = protocol index).
    pub parties: Vec<u16>,
    /// Envelopes for this session, already authenticated by the transport.
    pub incoming: mpsc::Receiver<Envelope>,
    /// Where outgoing envelopes go.
    pub outgoing: mpsc::Sender<Envelope>,
    /// Longest silence from every other party before the run fails: a
    /// participant that died mid-protocol ends the session, not a hang.
    pub idle_timeout: Option<Duration>,
    /// Who broke the session, as far as this party can tell.
    pub faults: SessionFaults,
}

/// Whom a party holds responsible for breaking a session, shared between
/// the session's network and its owner: the first participant whose
/// message did not decode or repeated a round, or the one that fell silent
/// while the others moved on. The run ends there.
#[derive(Clone, Debug, Default)]
pub struct SessionFaults {
    accused: Arc<OnceLock<Accusation>>,
}

/// A participant held responsible for breaking a session, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accusation {
    /// The participant's keygen index.
    pub party: u16,
    /// What it did (never quotes what it sent).
    pub reason: String,
    /// It sent nothing more, rather than something wrong: it may have died
    /// or lost its network as well as misbehaved.
    pub silent: bool,
}

impl SessionFaults {
    /// The participant held responsible, if any.
    pub fn accused(&self) -> Option<Accusation> {
        self.accused.get().cloned()
    }

    fn accuse(&self, party: u16, reason: String, silent: bool) {
        let _ = self.accused.set(Accusation { party, reason, silent });
    }

    /// Records that `from` sent a protocol message that does not decode;
    /// returns the error that ends the run.
    fn malformed(&self, from: u16, error: &serde_json::Error) -> DeliveryError {
        // The decoder's words quote what the peer sent: kept to the log.
        tracing::debug!(from, %error, "a protocol message that does not decode");
        self.accuse(from, format!("party {from} sent a protocol message that does not decode"), false);
        DeliveryError::Malformed(from)
    }

    /// Records that `from` sent another message for `round` than the one
    /// it sent before (an honest party sends one per round; an identical
    /// copy is dropped as a transport's repeat).
    fn repeated(&self, from: u16, round: u16) -> DeliveryError {
        self.accuse(
            from,
            format!("party {from} sent a second, different message for round {round} of the protocol"),
            false,
        );
        DeliveryError::Repeated { party: from, round }
    }

    /// Records, when nothing came for `idle` since this node last received
    /// or sent, who held the session up. Named only in a session of two,
    /// and only when the other party sent fewer rounds than this node: with
    /// more parties, one that withholds its messages from a second can make
    /// that second look behind to a third.
    fn silence(&self, seen: &Seen, parties: &[u16], me: u16, idle: Duration) -> DeliveryError {
        let count = |party: u16| seen.keys().filter(|(p, _)| *p == party).count();
        if let [a, b] = parties {
            let other = if *a == me { *b } else { *a };
            let (theirs, mine) = (count(other), count(me));
            if theirs < mine {
                let reason = format!(
                    "party {other} sent nothing for {idle:?} after {theirs} of the {mine} rounds this node reached"
                );
                self.accuse(other, reason, true);
            }
        }
        DeliveryError::Silent(idle)
    }
}

/// The protocol messages seen in a session, by (sender's keygen index,
/// round), with the SHA-256 of each: received from the others, sent by this
/// node.
type Seen = std::collections::BTreeMap<(u16, u16), [u8; 32]>;

/// Checks of the library whose blame names the party that failed them: a
/// proof or decommitment the named party sent. The reliability checks of
/// the echo rounds (`Round1aNotReliable`, `Round1NotReliable`) are not
/// among them: there `faulty_party` is only a party whose echo differs
/// from this node's view, which an equivocating third party can make an
/// honest one.
const ATTRIBUTING_ABORTS: [&str; 9] = [
    "EncProofOfK(",
    "InvalidPsi(",
    "InvalidPsiPrimePrime(",
    "InvalidDecommitment",
    "InvalidSchnorrProof(",
    "MissingChainCode(",
    "InvalidModProof",
    "InvalidFacProof",
    "InvalidRingPedersenParameters",
];

/// The party to hold responsible for a run among `parties` that the library
/// aborted (a check failed on what another party sent), if one can be:
/// - the party the library blames, for a check that attributes
///   ([`ATTRIBUTING_ABORTS`]). cggmp24 (0.7.0-alpha.3) keeps its blame
///   (`AbortBlame::faulty_party`, a protocol position) in types it does not
///   export, so it is read from their `Debug` form; `parties` maps the
///   position to a keygen index. Never this node, nor one of several.
/// - in a session of two, the other party, for any abort: this node sent
///   what its protocol computed, so whatever failed came from the other.
fn blamed(error: &impl std::fmt::Debug, parties: &[u16], me: u16) -> Option<u16> {
    let debug = format!("{error:?}");
    if !debug.contains("Aborted(") {
        // Input/output or a bug of this node's: nobody to name.
        return None;
    }
    if let [a, b] = parties {
        return Some(if *a == me { *b } else { *a });
    }
    if debug.contains("NotReliable") || !ATTRIBUTING_ABORTS.iter().any(|check| debug.contains(check)) {
        return None;
    }
    let mut found = debug.split("faulty_party: ").skip(1).filter_map(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<usize>().ok()
    });
    let first = found.next()?;
    if found.any(|other| other != first) {
        return None;
    }
    parties.get(first).copied().filter(|party| *party != me)
}

/// A library error with its causes, for a reason that names the check
/// that failed.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// `error` from a run of `me` among `parties`, as [`EngineError::Blamed`]
/// when it names a party ([`blamed`]).
fn blame<E>(error: E, parties: &[u16], me: u16) -> EngineError
where
    E: std::error::Error + Into<EngineError>,
{
    match blamed(&error, parties, me) {
        Some(party) => EngineError::Blamed { party, reason: with_causes(&error) },
        None => error.into(),
    }
}

/// Adapts a [`SessionNet`] to the library's `Delivery`: keygen indices
/// become protocol positions and back, payloads are (de)serialized.
/// Messages from outside the session's parties, or that do not parse, are
/// dropped: the protocol then times out or aborts, it never trusts them.
fn delivery<M>(net: SessionNet) -> Result<MpcParty<M, Delivery<M>>, EngineError>
where
    M: Serialize + DeserializeOwned + ProtocolMessage + Send + 'static,
{
    let SessionNet { session, me, parties, incoming, outgoing, idle_timeout, faults } = net;
    if !parties.contains(&me) {
        return Err(EngineError::NotAParticipant(me));
    }
    let positions = parties.clone();
    let seen = Arc::new(Mutex::new(Seen::new()));
    let sent_seen = Arc::clone(&seen);
    let mut next_id = 0u64;
    // Without a limit, a year: the protocol's own timeout ends the run first.
    let idle = idle_timeout.unwrap_or(Duration::from_secs(365 * 24 * 3600));
    // Silence counts from the last message received or sent: a node that
    // computed a long round itself does not blame the others for it.
    let activity = Arc::new(Mutex::new(tokio::time::Instant::now()));
    let sent_activity = Arc::clone(&activity);
    let received = futures::stream::unfold((incoming, activity), move |(mut rx, activity)| async move {
        loop {
            let since = *activity.lock().unwrap_or_else(PoisonError::into_inner);
            match tokio::time::timeout_at(since + idle, rx.recv()).await {
                Ok(Some(env)) => {
                    *activity.lock().unwrap_or_else(PoisonError::into_inner) = tokio::time::Instant::now();
                    return Some((Some(env), (rx, activity)));
                }
                Ok(None) => return None,
                // Nothing since: silence. Else this node sent meanwhile.
                Err(_) if *activity.lock().unwrap_or_else(PoisonError::into_inner) == since => {
                    return Some((None, (rx, activity)));
                }
                Err(_) => {}
            }
        }
    });
    let incoming = received.filter_map(move |env| {
        let Some(env) = env else {
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            return std::future::ready(Some(Err(faults.silence(&seen, &positions, me, idle))));
        };
        let sender = positions.iter().position(|p| *p == env.from);
        let ours = env.session == session && env.channel == Channel::Protocol && env.from != me;
        let msg = serde_json::from_slice::<M>(&env.payload);
        let out = match (sender, msg) {
            (Some(sender), Ok(msg)) if ours => {
                let round = msg.round();
                let digest: [u8; 32] = sha2_v010::Sha256::digest(&env.payload).into();
                let earlier = seen.lock().unwrap_or_else(PoisonError::into_inner).insert((env.from, round), digest);
                match earlier {
                    None => {
                        next_id += 1;
                        Some(Ok(Incoming {
                            id: next_id,
                            sender: sender as u16,
                            msg_type: if env.to.is_none() { MessageType::Broadcast } else { MessageType::P2P },
                            msg,
                        }))
                    }
                    Some(earlier) if earlier == digest => {
                        tracing::debug!(from = env.from, round, "dropped a repeat of a message");
                        None
                    }
                    Some(_) => Some(Err(faults.repeated(env.from, round))),
                }
            }
            (Some(_), Err(error)) if ours => Some(Err(faults.malformed(env.from, &error))),
            _ => {
                tracing::debug!(from = env.from, "dropped a message that is not for this session");
                None
            }
        };
        std::future::ready(out)
    });
    let mut seq = 0u64;
    let outgoing = futures::sink::unfold(outgoing, move |tx, out: Outgoing<M>| {
        seq += 1;
        sent_seen.lock().unwrap_or_else(PoisonError::into_inner).insert((me, out.msg.round()), [0; 32]);
        let to = match out.recipient {
            MessageDestination::AllParties => Ok(None),
            MessageDestination::OneParty(j) => {
                parties.get(usize::from(j)).copied().map(Some).ok_or(DeliveryError::NoSuchParty(j))
            }
        };
        let payload = serde_json::to_vec(&out.msg).map_err(DeliveryError::Encode);
        let env = to
            .and_then(|to| Ok(Envelope { session, channel: Channel::Protocol, from: me, to, seq, payload: payload? }));
        let activity = Arc::clone(&sent_activity);
        async move {
            tx.send(env?).await.map_err(|_| DeliveryError::Closed)?;
            *activity.lock().unwrap_or_else(PoisonError::into_inner) = tokio::time::Instant::now();
            Ok::<_, DeliveryError>(tx)
        }
    });
    Ok(MpcParty::connected((Box::pin(incoming) as IncomingStream<M>, Box::pin(outgoing) as OutgoingSink<M>)))
}

type IncomingStream<M> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Incoming<M>, DeliveryError>> + Send>>;
type OutgoingSink<M> = std::pin::Pin<Box<dyn futures::Sink<Outgoing<M>, Error = DeliveryError> + Send>>;
type Delivery<M> = (IncomingStream<M>, OutgoingSink<M>);

/// Failures inside the delivery adapter.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The transport side of the session is gone.
    #[error("session channel closed")]
    Closed,
    /// The protocol addressed a position outside the session.
    #[error("no party at protocol position {0}")]
    NoSuchParty(u16),
    /// No party sent anything for this long.
    #[error("no message from the other participants for {0:?}")]
    Silent(Duration),
    /// A protocol message could not be serialized.
    #[error("encoding a protocol message: {0}")]
    Encode(#[source] serde_json::Error),
    /// A participant sent a protocol message that does not decode.
    #[error("party {0} sent a protocol message that does not decode")]
    Malformed(u16),
    /// A participant sent a second message for a round.
    #[error("party {party} sent a second message for round {round} of the protocol")]
    Repeated {
        /// The participant.
        party: u16,
        /// The round.
        round: u16,
    },
}

/// Runs `protocol` on a thread of its own, driven by the current runtime.
///
/// The rounds of the MPC protocols compute for up to seconds between two
/// awaits (Paillier proofs, multi-exponentiations); on a runtime worker that
/// would stall everything else the worker serves — the node's API and
/// probes, the transport, heartbeats — and a busy node would look dead.
/// Dropping the returned future ends the protocol at its next await.
pub async fn on_own_thread<F>(protocol: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let cancel = tokio_util::sync::CancellationToken::new();
    let _cancel_on_drop = cancel.clone().drop_guard();
    let run = tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                out = protocol => Some(out),
            }
        })
    });
    match run.await {
        Ok(Some(out)) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled only once this future is dropped (so never awaited
        // here), or the runtime shuts down.
        Ok(None) | Err(_) => std::future::pending().await,
    }
}

/// Generates the four safe primes one party's aux info needs. Takes tens
/// of seconds to minutes: never on a signing path.
pub fn generate_primes() -> Primes {
    Primes::generate(&mut OsRng)
}

/// Runs aux info generation (Paillier keys and their proofs) for party
/// `net.me` of `n`. The expensive part, safe primes, comes pregenerated.
/// The library's multi-exponentiation tables for every party's ring-Pedersen
/// parameters are switched on (a large share of signing time); CRT for this
/// party's own modulus the library sets up itself.
pub async fn aux_info(eid: &[u8], n: u16, primes: Primes, net: SessionNet) -> Result<Aux, EngineError> {
    let (i, parties) = (net.me, net.parties.clone());
    let party = delivery(net)?;
    cggmp24::aux_info_gen(ExecutionId::new(eid), i, n, primes)
        .enforce_reliable_broadcast(true)
        .precompute_multiexp_tables(true)
        .start(&mut OsRng, party)
        .await
        .map_err(|e| blame(e, &parties, i))
}

/// Test fixture aux info (test builds only): per cluster size `n`, the aux
/// info of every party, from one real run of the protocol over the public
/// primes fixture, without the multi-exponentiation tables. Anyone can read
/// the Paillier keys in it: a node using it holds a key share anyone can
/// recover.
#[cfg(feature = "test-fixtures")]
pub type AuxFixture = std::collections::BTreeMap<u16, Vec<Aux>>;

/// Party `me`'s aux info for a cluster of `n` from an [`AuxFixture`] (JSON),
/// and the fixture's id for that `n` (the same on every node that reads the
/// same file). The multi-exponentiation tables are left out: building them
/// takes seconds per party (more than it saves a test), and they only make
/// signing about 15 % faster; aux info the nodes generate has them.
#[cfg(feature = "test-fixtures")]
pub fn fixture_aux_info(json: &[u8], n: u16, me: u16) -> Result<(String, Aux), String> {
    use sha2_v010::Digest as _;
    let mut fixture: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let entry = fixture.remove(&n.to_string()).ok_or_else(|| format!("no aux info for {n} parties"))?;
    let id = hex::encode(
        sha2_v010::Sha256::new().chain_update(b"torcus-test-aux:").chain_update(entry.to_string()).finalize(),
    );
    let mut all: Vec<Aux> = serde_json::from_value(entry).map_err(|e| e.to_string())?;
    if all.len() != usize::from(n) || usize::from(me) >= all.len() {
        return Err(format!("the fixture for {n} parties holds {} aux infos", all.len()));
    }
    Ok((id, all.swap_remove(usize::from(me))))
}

/// Runs threshold key generation (`t` of `n`, HD-enabled) for party `net.me`.
pub async fn keygen(eid: &[u8], n: u16, t: u16, net: SessionNet) -> Result<CoreShare, EngineError> {
    let (i, parties) = (net.me, net.parties.clone());
    let party = delivery(net)?;
    cggmp24::keygen::<Curve>(ExecutionId::new(eid), i, n)
        .set_threshold(t)
        .hd_wallet(true)
        .enforce_reliable_broadcast(true)
        .start(&mut OsRng, party)
        .await
        .map_err(|e| blame(e, &parties, i))
}

/// Joins a core share and aux info (from the same parties) into a key share.
pub fn complete(core: CoreShare, aux: Aux) -> Result<Share, EngineError> {
    KeyShare::from_parts((core, aux)).map_err(|e| EngineError::InvalidShare(e.to_string()))
}

/// A key share as it is stored: tagged with [`SHARE_FORMAT`], so that a
/// share of another format is recognised as such, never misread.
pub fn encode_share(share: &Share) -> Result<Zeroizing<Vec<u8>>, EngineError> {
    #[derive(Serialize)]
    struct Tagged<'a> {
        format: &'static str,
        share: &'a Share,
    }
    secret_json(&Tagged { format: SHARE_FORMAT, share })
}

/// `value` as JSON in a buffer that is zeroized when dropped, written once
/// into a buffer of exactly its length: no reallocation leaves a copy of
/// secret material behind in freed memory.
pub(crate) fn secret_json<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, EngineError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let invalid = |e: serde_json::Error| EngineError::InvalidShare(e.to_string());
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_err(invalid)?;
    let mut out = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *out, value).map_err(invalid)?;
    Ok(out)
}

/// Reads a stored share's typed content straight from its bytes (no
/// untyped copy of the secret in between).
fn typed_share<S: DeserializeOwned>(bytes: &[u8]) -> Result<S, ShareFormatError> {
    #[derive(Deserialize)]
    struct Typed<S> {
        share: S,
    }
    serde_json::from_slice::<Typed<S>>(bytes).map(|t| t.share).map_err(|e| ShareFormatError::Unreadable(e.to_string()))
}

/// The schemes this build runs, with the protocol (and its library
/// version) it runs each with, as the node advertises them.
pub fn schemes() -> Vec<torcus_contract::registry::SchemeSupport> {
    use torcus_contract::Scheme;
    use torcus_contract::registry::SchemeSupport;
    vec![
        SchemeSupport { scheme: Scheme::EcdsaSecp256k1.as_str().into(), protocol: "cggmp24/0.7.0-alpha.3".into() },
        SchemeSupport { scheme: Scheme::SchnorrBip340.as_str().into(), protocol: "frost-givre/0.2.0".into() },
        SchemeSupport { scheme: Scheme::EddsaEd25519.as_str().into(), protocol: "frost-givre/0.2.0".into() },
    ]
}

/// A stored key share of any scheme.
#[derive(Clone)]
pub enum AnyShare {
    /// A CGGMP24 ECDSA share (core share and aux info).
    Ecdsa(Share),
    /// A FROST share (BIP-340 or Ed25519).
    Frost(frost::FrostShare),
}

impl std::fmt::Debug for AnyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ecdsa(_) => f.write_str("AnyShare::Ecdsa(..)"),
            Self::Frost(share) => share.fmt(f),
        }
    }
}

/// Reads a share [`encode_share`] or [`frost::FrostShare::encode`] wrote,
/// or says what else it is.
pub fn decode_any_share(bytes: &[u8]) -> Result<AnyShare, ShareFormatError> {
    #[derive(Deserialize)]
    struct Tagged {
        format: Option<String>,
    }
    if let Ok(Tagged { format: Some(format) }) = serde_json::from_slice(bytes)
        && let Some(frost) = frost::FrostShare::decode(&format, bytes)
    {
        return frost.map(AnyShare::Frost);
    }
    decode_share(bytes).map(AnyShare::Ecdsa)
}

/// Reads an ECDSA share [`encode_share`] wrote, or says what else it is.
pub fn decode_share(bytes: &[u8]) -> Result<Share, ShareFormatError> {
    #[derive(Deserialize)]
    struct Tagged {
        format: Option<String>,
        share: Option<serde::de::IgnoredAny>,
        core: Option<serde::de::IgnoredAny>,
        aux: Option<serde::de::IgnoredAny>,
    }
    let tagged: Tagged = serde_json::from_slice(bytes).map_err(|e| ShareFormatError::Unreadable(e.to_string()))?;
    match tagged {
        Tagged { format: Some(format), share: Some(_), .. } if format == SHARE_FORMAT => typed_share(bytes),
        Tagged { format: Some(format), .. } => Err(ShareFormatError::Unreadable(format!("unknown format {format:?}"))),
        // cggmp21 0.6 serialised `KeyShare` as is: `{"core": …, "aux": …}`.
        Tagged { format: None, core: Some(_), aux: Some(_), .. } => Err(ShareFormatError::Cggmp21),
        Tagged { .. } => Err(ShareFormatError::Unreadable("no format tag".into())),
    }
}

/// The signing protocol of party `i` among `parties` for the key of `share`
/// derived along `path`: the path is set here, on the protocol, before a
/// presignature or signature exists, and reliable broadcast is enforced.
fn signing_builder<'r>(
    eid: &'r [u8],
    i: u16,
    parties: &'r [u16],
    share: &'r Share,
    path: &[u32],
) -> Result<cggmp24::signing::SigningBuilder<'r, Curve, Level>, EngineError> {
    let builder = cggmp24::signing(ExecutionId::new(eid), i, parties, share).enforce_reliable_broadcast(true);
    if path.is_empty() {
        return Ok(builder);
    }
    builder.set_derivation_path(path.iter().copied()).map_err(|e| EngineError::DerivationPath(e.to_string()))
}

/// Runs the full signing protocol among `net.parties` over `message`,
/// optionally for a non-hardened child key at `path`. A raw digest is signed
/// only here, never with a presignature.
pub async fn sign(
    eid: &[u8],
    share: &Share,
    message: Message<'_>,
    path: &[u32],
    net: SessionNet,
) -> Result<Signature, EngineError> {
    let (parties, me) = (net.parties.clone(), net.me);
    let i = position(&parties, me)?;
    let party = delivery(net)?;
    let builder = signing_builder(eid, i, &parties, share, path)?;
    let signature = match message {
        Message::Payload(payload) => builder.sign(&mut OsRng, party, &payload.data_to_sign()).await,
        Message::Digest(digest) => builder.sign(&mut OsRng, party, &prehashed(digest)).await,
    };
    signature.map_err(|e| blame(e, &parties, me))
}

/// Runs presignature generation among `net.parties` for the key of `share`
/// derived along `path`, which is fixed now, before the presignature exists.
/// The result belongs to exactly this signer set and path and is used at
/// most once.
pub async fn presign(eid: &[u8], share: &Share, path: &[u32], net: SessionNet) -> Result<Presig, EngineError> {
    let (parties, me) = (net.parties.clone(), net.me);
    let i = position(&parties, me)?;
    let party = delivery(net)?;
    let builder = signing_builder(eid, i, &parties, share, path)?;
    let (secret, public) =
        builder.generate_presignature(&mut OsRng, party).await.map_err(|e| blame(e, &parties, me))?;
    Ok(Presig { secret, public, parties, path: path.to_vec() })
}

/// This party's partial signature of `payload` (consuming the presignature:
/// it cannot be used twice). Refused unless the presignature was made for
/// `parties` and `path`.
pub fn partial_sign(
    presig: Presig,
    parties: &[u16],
    path: &[u32],
    payload: Payload<'_>,
) -> Result<(Partial, PresigPublic), EngineError> {
    if presig.parties != parties || presig.path != path {
        return Err(EngineError::PresignatureMismatch {
            made_for: format!("signers {:?}, path {:?}", presig.parties, presig.path),
            asked: format!("signers {parties:?}, path {path:?}"),
        });
    }
    let Presig { secret, public, parties, .. } = presig;
    let partial = Partial(secret.issue_partial_signature(payload.data_to_sign()));
    Ok((partial, PresigPublic { public, parties }))
}

/// A partial signature: carries no secret (the library documents them as
/// safe to publish).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Partial(PartialSignature<Curve>);

/// The public data of a consumed presignature, to check partial signatures.
#[derive(Debug)]
pub struct PresigPublic {
    public: PresignaturePublicData<Curve>,
    parties: Vec<u16>,
}

/// Signs `payload` with a presignature among `net.parties`: issues this
/// party's partial signature (consuming the presignature), sends it to every
/// other party, checks each one received against the presignature's public
/// data, and combines them into a signature checked against the (derived)
/// public key. Every party of the set must run this with its part of the
/// same presignature, the same payload and the same path.
///
/// Anything from outside the set, or a repeat of a partial signature, is
/// ignored; one that does not parse, a second different one from the same
/// party, or one that does not match its sender's commitment fails the
/// session naming that sender, and so does silence (in a session of two).
pub async fn sign_presigned(
    presig: Presig,
    share: &Share,
    payload: Payload<'_>,
    path: &[u32],
    net: SessionNet,
) -> Result<Signature, EngineError> {
    let SessionNet { session, me, parties, mut incoming, outgoing, idle_timeout, faults } = net;
    position(&parties, me)?;
    let (partial, public) = partial_sign(presig, &parties, path, payload)?;
    let body = serde_json::to_vec(&partial).map_err(DeliveryError::Encode)?;
    let envelope = Envelope { session, channel: Channel::Protocol, from: me, to: None, seq: 1, payload: body };
    outgoing.send(envelope).await.map_err(|_| DeliveryError::Closed)?;
    let mut partials = std::collections::BTreeMap::from([(me, partial)]);
    // One round: what each party sent in it (this node's own counted too).
    let mut seen = Seen::from([((me, 0), [0; 32])]);
    let idle = idle_timeout.unwrap_or(Duration::from_secs(365 * 24 * 3600));
    while partials.len() < parties.len() {
        let Ok(env) = tokio::time::timeout(idle, incoming.recv()).await else {
            return Err(faults.silence(&seen, &parties, me, idle).into());
        };
        let env = env.ok_or(DeliveryError::Closed)?;
        let ours = env.session == session && env.channel == Channel::Protocol && env.from != me;
        if !ours || !parties.contains(&env.from) {
            tracing::debug!(from = env.from, "dropped a message that is not a partial signature of this session");
            continue;
        }
        let digest: [u8; 32] = sha2_v010::Sha256::digest(&env.payload).into();
        match seen.insert((env.from, 0), digest) {
            None => {}
            Some(earlier) if earlier == digest => continue,
            Some(_) => return Err(faults.repeated(env.from, 0).into()),
        }
        match serde_json::from_slice::<Partial>(&env.payload) {
            Ok(partial) => {
                partials.insert(env.from, partial);
            }
            Err(error) => return Err(faults.malformed(env.from, &error).into()),
        }
    }
    combine(&partials, &public, share, payload, path)
}

/// Checks every partial signature (keyed by its sender's keygen index)
/// against the sender's commitment in the presignature's public data,
/// combines them, and checks the result against the (derived) public key
/// before anyone sees it.
pub fn combine(
    partials: &std::collections::BTreeMap<u16, Partial>,
    public: &PresigPublic,
    share: &Share,
    payload: Payload<'_>,
    path: &[u32],
) -> Result<Signature, EngineError> {
    let data = payload.data_to_sign();
    let gamma = public.public.Gamma;
    let r = gamma.x().to_scalar();
    let m = data.to_scalar();
    let mut ordered = Vec::with_capacity(public.parties.len());
    for (position, party) in public.parties.iter().enumerate() {
        let Partial(partial) = partials.get(party).ok_or(EngineError::Combine)?;
        let commitment = public.public.commitments.get(position).ok_or(EngineError::Combine)?;
        // What `PartialSignature::combine` checks for all at once, per
        // party, so that a bad one names its sender.
        if partial.sigma * gamma != m * commitment.tilde_Delta + r * commitment.tilde_S {
            return Err(EngineError::BadPartial(*party));
        }
        ordered.push(*partial);
    }
    let signature = PartialSignature::combine(&ordered, &public.public, data).ok_or(EngineError::Combine)?;
    let public_key = public_key(share, path)?;
    signature.verify(&public_key, &data).map_err(|_| EngineError::Combine)?;
    Ok(signature)
}

/// r and s of a signature, big-endian.
pub fn signature_bytes(signature: &Signature) -> ([u8; 32], [u8; 32]) {
    let mut out = [0u8; 64];
    signature.write_to_slice(&mut out);
    let (mut r, mut s) = ([0u8; 32], [0u8; 32]);
    r.copy_from_slice(&out[..32]);
    s.copy_from_slice(&out[32..]);
    (r, s)
}

/// The public key of `share`, derived along `path` when it is not empty.
pub fn public_key(share: &Share, path: &[u32]) -> Result<cggmp24::generic_ec::Point<Curve>, EngineError> {
    if path.is_empty() {
        return Ok(*share.shared_public_key);
    }
    let child = share
        .derive_child_public_key::<cggmp24::hd_wallet::Slip10, _>(path.iter().copied())
        .map_err(|e| EngineError::DerivationPath(e.to_string()))?;
    Ok(child.public_key)
}

/// The compressed public key of `share` (derived along `path`).
pub fn public_key_bytes(share: &Share, path: &[u32]) -> Result<Vec<u8>, EngineError> {
    Ok(public_key(share, path)?.to_bytes(true).to_vec())
}

/// The SLIP-10 chain code of `share`, when it can derive keys.
pub fn chain_code(share: &Share) -> Option<[u8; 32]> {
    share.chain_code
}

/// A requester's digest, for the full protocol only: z = digest mod n, as
/// every secp256k1 verifier takes a prehashed message.
fn prehashed(digest: &[u8; 32]) -> PrehashedDataToSign<Curve> {
    PrehashedDataToSign::from_scalar(cggmp24::generic_ec::Scalar::from_be_bytes_mod_order(digest))
}

fn position(parties: &[u16], me: u16) -> Result<u16, EngineError> {
    parties.iter().position(|p| *p == me).map(|i| i as u16).ok_or(EngineError::NotAParticipant(me))
}

/// An in-memory network for tests and the in-process benchmark: routes each
/// envelope to its recipient's channel (broadcasts to every other party).
pub mod memory {
    use std::collections::HashMap;

    use tokio::sync::mpsc;

    use super::{Envelope, SessionFaults, SessionNet};

    /// Builds one connected [`SessionNet`] per party, and spawns the router.
    pub fn network(session: [u8; 32], parties: &[u16]) -> Vec<SessionNet> {
        let (out_tx, mut out_rx) = mpsc::channel::<Envelope>(1024);
        let mut inboxes = HashMap::new();
        let mut nets = Vec::new();
        for &me in parties {
            let (tx, rx) = mpsc::channel(1024);
            inboxes.insert(me, tx);
            nets.push(SessionNet {
                session,
                me,
                parties: parties.to_vec(),
                incoming: rx,
                outgoing: out_tx.clone(),
                idle_timeout: None,
                faults: SessionFaults::default(),
            });
        }
        drop(out_tx);
        tokio::spawn(async move {
            while let Some(env) = out_rx.recv().await {
                let targets: Vec<u16> = match env.to {
                    Some(to) => vec![to],
                    None => inboxes.keys().copied().filter(|p| *p != env.from).collect(),
                };
                for to in targets {
                    if let Some(tx) = inboxes.get(&to) {
                        let _ = tx.send(env.clone()).await;
                    }
                }
            }
        });
        nets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-round protocol's messages, for the delivery adapter alone.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum TwoRounds {
        First(u32),
        Second(u32),
    }

    impl ProtocolMessage for TwoRounds {
        fn round(&self) -> u16 {
            match self {
                Self::First(_) => 0,
                Self::Second(_) => 1,
            }
        }
    }

    /// Party 0's side of a session among `parties`: its incoming stream
    /// and outgoing sink, the sender of what it receives, its faults, and
    /// the receiver of what it sends.
    struct Inbox {
        incoming: IncomingStream<TwoRounds>,
        outgoing: OutgoingSink<TwoRounds>,
        tx: mpsc::Sender<Envelope>,
        faults: SessionFaults,
        _sent: mpsc::Receiver<Envelope>,
    }

    fn inbox(parties: Vec<u16>, idle: Option<Duration>) -> Inbox {
        let (tx, incoming) = mpsc::channel(16);
        let (outgoing, sent) = mpsc::channel(16);
        let faults = SessionFaults::default();
        let net = SessionNet {
            session: [1; 32],
            me: 0,
            parties,
            incoming,
            outgoing,
            idle_timeout: idle,
            faults: faults.clone(),
        };
        let mut parts = None;
        let _ = delivery::<TwoRounds>(net).unwrap().map_delivery(|d| parts = Some(d));
        let (incoming, outgoing) = parts.unwrap();
        Inbox { incoming, outgoing, tx, faults, _sent: sent }
    }

    fn from(party: u16, msg: &TwoRounds) -> Envelope {
        let payload = serde_json::to_vec(msg).unwrap();
        Envelope { session: [1; 32], channel: Channel::Protocol, from: party, to: None, seq: 1, payload }
    }

    #[tokio::test]
    async fn a_repeat_is_dropped_and_a_different_message_for_a_round_names_its_sender() {
        let Inbox { mut incoming, tx, faults, .. } = inbox(vec![0, 3, 5], None);
        tx.send(from(3, &TwoRounds::First(7))).await.unwrap();
        tx.send(from(3, &TwoRounds::First(7))).await.unwrap();
        tx.send(from(5, &TwoRounds::First(7))).await.unwrap();
        tx.send(from(3, &TwoRounds::Second(1))).await.unwrap();
        tx.send(from(5, &TwoRounds::First(8))).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            let msg = incoming.next().await.unwrap().unwrap();
            got.push((msg.sender, msg.msg));
        }
        // Protocol positions: party 3 is 1, party 5 is 2; the repeat is gone.
        assert_eq!(got, [(1, TwoRounds::First(7)), (2, TwoRounds::First(7)), (1, TwoRounds::Second(1))]);
        let error = incoming.next().await.unwrap().unwrap_err();
        assert!(matches!(error, DeliveryError::Repeated { party: 5, round: 0 }), "{error}");
        let accused = faults.accused().unwrap();
        assert_eq!((accused.party, accused.silent), (5, false), "{accused:?}");
    }

    #[tokio::test]
    async fn silence_names_the_other_of_two_when_it_is_behind_and_nobody_among_more() {
        use futures::SinkExt as _;
        let idle = Some(Duration::from_millis(100));
        // Two parties: this one sent round 0 and round 1, the other only
        // round 0, then nothing.
        let Inbox { mut incoming, mut outgoing, tx, faults, _sent } = inbox(vec![0, 4], idle);
        for msg in [TwoRounds::First(1), TwoRounds::Second(1)] {
            outgoing.send(Outgoing { recipient: MessageDestination::AllParties, msg }).await.unwrap();
        }
        tx.send(from(4, &TwoRounds::First(2))).await.unwrap();
        assert!(incoming.next().await.unwrap().is_ok());
        let error = incoming.next().await.unwrap().unwrap_err();
        assert!(matches!(error, DeliveryError::Silent(_)), "{error}");
        let accused = faults.accused().unwrap();
        assert_eq!((accused.party, accused.silent), (4, true), "{accused:?}");

        // Level with this node: nobody is named.
        let Inbox { mut incoming, mut outgoing, tx, faults, _sent } = inbox(vec![0, 4], idle);
        outgoing.send(Outgoing { recipient: MessageDestination::AllParties, msg: TwoRounds::First(1) }).await.unwrap();
        tx.send(from(4, &TwoRounds::First(2))).await.unwrap();
        assert!(incoming.next().await.unwrap().is_ok());
        assert!(incoming.next().await.unwrap().is_err());
        assert_eq!(faults.accused(), None);

        // Three parties, one behind: nobody is named (a party withholding
        // from one other could make that one look behind).
        let Inbox { mut incoming, mut outgoing, tx, faults, _sent } = inbox(vec![0, 4, 6], idle);
        outgoing.send(Outgoing { recipient: MessageDestination::AllParties, msg: TwoRounds::First(1) }).await.unwrap();
        tx.send(from(4, &TwoRounds::First(2))).await.unwrap();
        assert!(incoming.next().await.unwrap().is_ok());
        assert!(incoming.next().await.unwrap().is_err());
        assert_eq!(faults.accused(), None);
    }

    #[test]
    fn library_blame_is_taken_only_where_it_attributes() {
        // The shapes of cggmp24's `Debug` output (0.7.0-alpha.3).
        let proof = "SigningError(Aborted(EncProofOfK([(AbortBlame { faulty_party: 2, data_message: 3, proof_message: 4 }, InvalidProof)])))";
        let echo = "SigningError(Aborted(Round1aNotReliable([AbortBlame { faulty_party: 1, data_message: 3, proof_message: 3 }])))";
        let io = "SigningError(IoError(ReceiveMessage(..)))";
        let two = "SigningError(Aborted(EncProofOfK([(AbortBlame { faulty_party: 1, .. }), (AbortBlame { faulty_party: 2, .. })])))";
        // Positions map to keygen indices.
        assert_eq!(blamed(&proof, &[4, 7, 9], 4), Some(9));
        assert_eq!(blamed(&proof, &[9, 7, 4], 9), Some(4));
        assert_eq!(blamed(&proof, &[4, 7, 9], 9), None, "never this node");
        assert_eq!(blamed(&echo, &[4, 7, 9], 4), None, "an echo check attributes nothing among three");
        assert_eq!(blamed(&two, &[4, 7, 9], 4), None, "several blamed: nobody");
        assert_eq!(blamed(&io, &[4, 7, 9], 4), None);
        // Between two, any abort is the other's doing; input/output is not.
        assert_eq!(blamed(&echo, &[4, 7], 4), Some(7));
        assert_eq!(blamed(&echo, &[4, 7], 7), Some(4));
        assert_eq!(blamed(&io, &[4, 7], 4), None);
    }

    #[test]
    fn payload_digests_match_the_published_hashes() {
        // SHA-256("abc"), Keccak-256("abc") and SHA-256(SHA-256("abc")).
        let cases = [
            (HashAlgorithm::Sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (HashAlgorithm::Keccak256, "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"),
            (HashAlgorithm::Sha256d, "4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358"),
        ];
        for (hash, expected) in cases {
            let payload = Payload { hash, bytes: b"abc" };
            assert_eq!(hex::encode(payload.digest()), expected, "{hash:?}");
            let scalar = payload.data_to_sign().to_scalar();
            assert_eq!(hex::encode(scalar.to_be_bytes()), expected, "{hash:?}: the library signs the same digest");
        }
    }

    #[test]
    fn old_and_unknown_share_formats_are_named() {
        let old = br#"{"core":{"curve":"secp256k1"},"aux":{"p":"00","q":"00","parties":[]}}"#;
        assert!(matches!(decode_share(old), Err(ShareFormatError::Cggmp21)));
        let message = ShareFormatError::Cggmp21.to_string();
        assert!(message.contains("cggmp21") && message.contains("previous Torcus release"), "{message}");
        let other = br#"{"format":"torcus-key-share/other","share":{}}"#;
        assert!(matches!(decode_share(other), Err(ShareFormatError::Unreadable(m)) if m.contains("other")));
        assert!(matches!(decode_share(b"[1]"), Err(ShareFormatError::Unreadable(_))));
        assert!(matches!(decode_share(b"{}"), Err(ShareFormatError::Unreadable(_))));
    }
}
