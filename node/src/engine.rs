//! The protocol engine: CGGMP'21 threshold ECDSA on secp256k1 (the
//! `cggmp21` crate), run over any message channel.
//!
//! Each protocol run is a *session*: an execution id derived from the grant
//! that authorised it, the ordered list of parties taking part, and a pair of
//! channels carrying [`Envelope`]s. The engine never touches a socket; a
//! transport (QUIC, TCP, relay, or the in-memory hub in tests) moves the
//! envelopes, and a test can drive a whole cluster in one process.
//!
//! Nothing here switches off a check of the library: reliable broadcast is
//! enforced (the library default, asserted by name), and every proof is
//! verified. The precomputation the library offers (multi-exponentiation
//! tables and CRT for Paillier) is turned on when aux info is generated.

use cggmp21::key_share::AuxInfo;
use cggmp21::round_based::{Incoming, MessageDestination, MessageType, MpcParty, Outgoing};
use cggmp21::{DataToSign, ExecutionId, IncompleteKeyShare, KeyShare, PregeneratedPrimes, Presignature, Signature};
use futures::StreamExt;
use rand_core::OsRng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The curve of every Torcus key.
pub type Curve = cggmp21::supported_curves::Secp256k1;
/// Security level of the Paillier and ZK parameters (128-bit).
pub type Level = cggmp21::security_level::SecurityLevel128;
/// A complete key share (core share plus aux info).
pub type Share = KeyShare<Curve, Level>;
/// A key share before aux info is attached.
pub type CoreShare = IncompleteKeyShare<Curve>;
/// Aux info (Paillier keys and ring-Pedersen parameters) of one party.
pub type Aux = AuxInfo<Level>;
/// Pregenerated safe primes for aux info.
pub type Primes = PregeneratedPrimes<Level>;
/// A presignature: usable for exactly one signature, never persisted.
pub type Presig = Presignature<Curve>;

/// One protocol message between two parties of a session, as transports
/// carry it. `from` is what the transport authenticated (for QUIC, the party
/// index in the peer's certificate), never what the sender claims.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Session the message belongs to.
    pub session: [u8; 32],
    /// Session control (Proposal, Ack, Start, Abort) or protocol traffic.
    pub channel: Channel,
    /// Sending party (keygen index).
    pub from: u16,
    /// Receiving party, or `None` for a broadcast.
    pub to: Option<u16>,
    /// Per-sender sequence number within the session.
    pub seq: u64,
    /// The protocol message, serialized.
    pub payload: Vec<u8>,
}

/// What an envelope carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// A message of the MPC protocol.
    #[default]
    Protocol,
    /// A session control message (`torcus_contract::Control`, JSON).
    Control,
    /// A transport's own greeting (the sender's boot id); never reaches a session.
    Hello,
}

/// Why a protocol run failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Key generation failed (a party misbehaved or the network broke).
    #[error("keygen: {0}")]
    Keygen(#[from] cggmp21::KeygenError),
    /// Aux info generation failed.
    #[error("aux info: {0}")]
    AuxInfo(#[from] cggmp21::KeyRefreshError),
    /// Signing or presigning failed.
    #[error("signing: {0}")]
    Signing(#[from] cggmp21::SigningError),
    /// Parts do not make a valid key share.
    #[error("invalid key share: {0}")]
    InvalidShare(String),
    /// The derivation path cannot be used (hardened index or HD disabled).
    #[error("derivation path: {0}")]
    DerivationPath(String),
    /// This party is not among the session's parties.
    #[error("party {0} is not in this session")]
    NotAParticipant(u16),
    /// Partial signatures did not combine into a valid signature.
    #[error("partial signatures do not combine into a valid signature")]
    Combine,
    /// Exchanging partial signatures failed.
    #[error("exchanging partial signatures: {0}")]
    Delivery(#[from] DeliveryError),
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
    pub idle_timeout: Option<std::time::Duration>,
}

/// Adapts a [`SessionNet`] to the library's `Delivery`: keygen indices
/// become protocol positions and back, payloads are (de)serialized.
/// Messages from outside the session's parties, or that do not parse, are
/// dropped: the protocol then times out or aborts, it never trusts them.
fn delivery<M>(net: SessionNet) -> Result<MpcParty<M, Delivery<M>>, EngineError>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    let SessionNet { session, me, parties, incoming, outgoing, idle_timeout } = net;
    if !parties.contains(&me) {
        return Err(EngineError::NotAParticipant(me));
    }
    let positions = parties.clone();
    let mut next_id = 0u64;
    // Without a limit, a year: the protocol's own timeout ends the run first.
    let idle = idle_timeout.unwrap_or(std::time::Duration::from_secs(365 * 24 * 3600));
    let received = tokio_stream::StreamExt::timeout(tokio_stream::wrappers::ReceiverStream::new(incoming), idle);
    let incoming = received.filter_map(move |env| {
        let env: Envelope = match env {
            Ok(env) => env,
            Err(_) => return std::future::ready(Some(Err(DeliveryError::Silent(idle)))),
        };
        let sender = positions.iter().position(|p| *p == env.from);
        let msg = serde_json::from_slice::<M>(&env.payload);
        let out = match (sender, msg) {
            (Some(sender), Ok(msg)) if env.session == session && env.channel == Channel::Protocol => {
                next_id += 1;
                Some(Ok(Incoming {
                    id: next_id,
                    sender: sender as u16,
                    msg_type: if env.to.is_none() { MessageType::Broadcast } else { MessageType::P2P },
                    msg,
                }))
            }
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
        let to = match out.recipient {
            MessageDestination::AllParties => Ok(None),
            MessageDestination::OneParty(j) => {
                parties.get(usize::from(j)).copied().map(Some).ok_or(DeliveryError::NoSuchParty(j))
            }
        };
        let payload = serde_json::to_vec(&out.msg).map_err(DeliveryError::Encode);
        let env = to
            .and_then(|to| Ok(Envelope { session, channel: Channel::Protocol, from: me, to, seq, payload: payload? }));
        async move {
            tx.send(env?).await.map_err(|_| DeliveryError::Closed)?;
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
    Silent(std::time::Duration),
    /// A protocol message could not be serialized.
    #[error("encoding a protocol message: {0}")]
    Encode(#[source] serde_json::Error),
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

/// Runs aux info generation (Paillier keys and their proofs) for party
/// `net.me` of `n`. The expensive part, safe primes, comes pregenerated.
pub async fn aux_info(eid: &[u8], n: u16, primes: Primes, net: SessionNet) -> Result<Aux, EngineError> {
    let i = net.me;
    let party = delivery(net)?;
    Ok(cggmp21::aux_info_gen(ExecutionId::new(eid), i, n, primes)
        .enforce_reliable_broadcast(true)
        // Precomputation the library offers: multi-exponentiation tables
        // and CRT for the Paillier operations, a large share of signing time.
        .precompute_multiexp_tables(true)
        .precompute_crt(true)
        .start(&mut OsRng, party)
        .await?)
}

/// Runs threshold key generation (`t` of `n`, HD-enabled) for party `net.me`.
pub async fn keygen(eid: &[u8], n: u16, t: u16, net: SessionNet) -> Result<CoreShare, EngineError> {
    let i = net.me;
    let party = delivery(net)?;
    Ok(cggmp21::keygen::<Curve>(ExecutionId::new(eid), i, n)
        .set_threshold(t)
        .hd_wallet(true)
        .enforce_reliable_broadcast(true)
        .start(&mut OsRng, party)
        .await?)
}

/// Joins a core share and aux info (from the same parties) into a key share.
pub fn complete(core: CoreShare, aux: Aux) -> Result<Share, EngineError> {
    KeyShare::from_parts((core, aux)).map_err(|e| EngineError::InvalidShare(e.to_string()))
}

/// Runs the full signing protocol among `net.parties` over a 32-byte
/// digest, optionally for a non-hardened child key at `path`.
pub async fn sign(
    eid: &[u8],
    share: &Share,
    digest: &[u8; 32],
    path: &[u32],
    net: SessionNet,
) -> Result<Signature<Curve>, EngineError> {
    let parties = net.parties.clone();
    let i = position(&parties, net.me)?;
    let party = delivery(net)?;
    let mut builder = cggmp21::signing(ExecutionId::new(eid), i, &parties, share).enforce_reliable_broadcast(true);
    if !path.is_empty() {
        builder = builder
            .set_derivation_path(path.iter().copied())
            .map_err(|e| EngineError::DerivationPath(e.to_string()))?;
    }
    Ok(builder.sign(&mut OsRng, party, data_to_sign(digest)).await?)
}

/// Runs presignature generation among `net.parties`. The result belongs to
/// exactly this signer set and must be used at most once.
pub async fn presign(eid: &[u8], share: &Share, net: SessionNet) -> Result<Presig, EngineError> {
    let parties = net.parties.clone();
    let i = position(&parties, net.me)?;
    let party = delivery(net)?;
    Ok(cggmp21::signing(ExecutionId::new(eid), i, &parties, share)
        .enforce_reliable_broadcast(true)
        .generate_presignature(&mut OsRng, party)
        .await?)
}

/// A partial signature from a presignature (consumed: it cannot be used twice).
pub fn partial_sign(
    presig: Presig,
    share: &Share,
    digest: &[u8; 32],
    path: &[u32],
) -> Result<cggmp21::PartialSignature<Curve>, EngineError> {
    let presig = if path.is_empty() {
        presig
    } else {
        let epub =
            share.extended_public_key().ok_or_else(|| EngineError::DerivationPath("key has no HD support".into()))?;
        presig
            .set_derivation_path(epub, path.iter().copied())
            .map_err(|e| EngineError::DerivationPath(e.to_string()))?
    };
    Ok(presig.issue_partial_signature(data_to_sign(digest)))
}

/// Signs with a presignature among `net.parties`: issues this party's
/// partial signature (consuming the presignature), sends it to every other
/// party, and combines it with theirs into a signature checked against the
/// (derived) public key. Every party of the set must run this with its part
/// of the same presignature, the same digest and the same path.
///
/// Partial signatures carry no secret (cggmp21 documents them as safe to
/// publish); the first one from each party counts, anything from outside
/// the set or that does not parse is ignored, and a bad one fails the check.
pub async fn sign_presigned(
    presig: Presig,
    share: &Share,
    digest: &[u8; 32],
    path: &[u32],
    net: SessionNet,
) -> Result<Signature<Curve>, EngineError> {
    let SessionNet { session, me, parties, mut incoming, outgoing, idle_timeout } = net;
    position(&parties, me)?;
    let partial = partial_sign(presig, share, digest, path)?;
    let payload = serde_json::to_vec(&partial).map_err(DeliveryError::Encode)?;
    let envelope = Envelope { session, channel: Channel::Protocol, from: me, to: None, seq: 1, payload };
    outgoing.send(envelope).await.map_err(|_| DeliveryError::Closed)?;
    let mut partials = std::collections::BTreeMap::from([(me, partial)]);
    let idle = idle_timeout.unwrap_or(std::time::Duration::from_secs(365 * 24 * 3600));
    while partials.len() < parties.len() {
        let env = tokio::time::timeout(idle, incoming.recv())
            .await
            .map_err(|_| DeliveryError::Silent(idle))?
            .ok_or(DeliveryError::Closed)?;
        let fresh = parties.contains(&env.from) && !partials.contains_key(&env.from);
        if env.session != session || env.channel != Channel::Protocol || !fresh {
            tracing::debug!(from = env.from, "dropped a message that is not a partial signature of this session");
            continue;
        }
        match serde_json::from_slice::<cggmp21::PartialSignature<Curve>>(&env.payload) {
            Ok(partial) => {
                partials.insert(env.from, partial);
            }
            Err(_) => tracing::debug!(from = env.from, "dropped a partial signature that does not parse"),
        }
    }
    let partials: Vec<_> = partials.into_values().collect();
    combine(&partials, share, digest, path)
}

/// Combines partial signatures and checks the result against the (derived)
/// public key before anyone sees it.
pub fn combine(
    partials: &[cggmp21::PartialSignature<Curve>],
    share: &Share,
    digest: &[u8; 32],
    path: &[u32],
) -> Result<Signature<Curve>, EngineError> {
    let signature = cggmp21::PartialSignature::combine(partials).ok_or(EngineError::Combine)?;
    let public_key = public_key(share, path)?;
    signature.verify(&public_key, &data_to_sign(digest)).map_err(|_| EngineError::Combine)?;
    Ok(signature)
}

/// The public key of `share`, derived along `path` when it is not empty.
pub fn public_key(share: &Share, path: &[u32]) -> Result<cggmp21::generic_ec::Point<Curve>, EngineError> {
    if path.is_empty() {
        return Ok(*share.shared_public_key);
    }
    let child = share
        .derive_child_public_key::<cggmp21::hd_wallet::Slip10, _>(path.iter().copied())
        .map_err(|e| EngineError::DerivationPath(e.to_string()))?;
    Ok(child.public_key)
}

/// The SLIP-10 chain code of `share`, when it can derive keys.
pub fn chain_code(share: &Share) -> Option<[u8; 32]> {
    share.chain_code
}

/// Derives along `path` from the extended public key (`public_key`, a
/// compressed or uncompressed SEC1 point, and `chain_code`) the public key
/// signing with that path verifies under, compressed: what [`public_key`]
/// computes from a share, from public material only.
pub fn derive_public_key(public_key: &[u8], chain_code: &[u8; 32], path: &[u32]) -> Result<Vec<u8>, EngineError> {
    let point = cggmp21::generic_ec::Point::<Curve>::from_bytes(public_key)
        .map_err(|_| EngineError::DerivationPath("not a secp256k1 point".into()))?;
    let parent = cggmp21::hd_wallet::ExtendedPublicKey { public_key: point, chain_code: *chain_code };
    let child =
        <cggmp21::hd_wallet::Slip10 as cggmp21::hd_wallet::HdWallet<Curve>>::try_derive_child_public_key_with_path(
            &parent,
            path.iter().map(|i| cggmp21::hd_wallet::NonHardenedIndex::try_from(*i)),
        )
        .map_err(|e| EngineError::DerivationPath(e.to_string()))?;
    Ok(child.public_key.to_bytes(true).to_vec())
}

/// ECDSA signs the digest itself (z = digest mod n), as every secp256k1
/// verifier expects for a prehashed message.
pub fn data_to_sign(digest: &[u8; 32]) -> DataToSign<Curve> {
    DataToSign::from_scalar(cggmp21::generic_ec::Scalar::from_be_bytes_mod_order(digest))
}

fn position(parties: &[u16], me: u16) -> Result<u16, EngineError> {
    parties.iter().position(|p| *p == me).map(|i| i as u16).ok_or(EngineError::NotAParticipant(me))
}

/// An in-memory network for tests and the in-process benchmark: routes each
/// envelope to its recipient's channel (broadcasts to every other party).
pub mod memory {
    use std::collections::HashMap;

    use tokio::sync::mpsc;

    use super::{Envelope, SessionNet};

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
