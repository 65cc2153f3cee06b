//! End-to-end sealing of protocol envelopes between nodes.
//!
//! CGGMP'21 needs confidential point-to-point channels: keygen messages
//! carry secret shares. QUIC has them (mutual TLS), but the TCP transport
//! only signs its frames and the HTTP relay — run by the operator — sees
//! every payload. Every transport mode but pure QUIC therefore seals each
//! envelope for its one recipient: only the two nodes at either end can read
//! it, and only its sender can have made it.
//!
//! # Keys
//!
//! Each node has a static X25519 key, its *seal key*: a random 32-byte seed
//! (`seal.key` next to `identity.key`) whose public half the operator
//! publishes as the `sealKey` of the node's peer entry. It is not the Ed25519
//! identity that signs TCP frames: one key, one purpose. Nodes `i` and `j`
//! share the X25519 secret `s`, and derive one key per direction:
//!
//! `k(i→j) = SHA-256("torcus-seal-v1" ‖ len u64 ‖ cluster ‖ i u16 ‖ j u16 ‖ s)`
//!
//! with `cluster` = `<namespace>/<name>` (integers big-endian), so a key of
//! one cluster or one direction is worth nothing in another.
//!
//! # Envelopes
//!
//! The payload becomes `nonce[24] ‖ ciphertext ‖ tag[16]`, XChaCha20-Poly1305
//! under `k(from→recipient)` with a random nonce, and the header as
//! associated data: `session[32] ‖ channel u8 ‖ from u16 ‖ recipient u16 ‖
//! broadcast u8 ‖ seq u64`. The header itself stays in clear (transports
//! route by it), but altering any of it, or handing the envelope to another
//! party, makes it fail to open. A broadcast is sealed once per recipient
//! (transports fan broadcasts out) and keeps `to == None`.
//!
//! Since only `i` and `j` know `k(i→j)`, an envelope that opens is from the
//! party it names: this is what authenticates `from` on the relay, where it
//! is only claimed in a header.
//!
//! # What sealing does not do
//!
//! - No forward secrecy: the keys are static, so whoever later learns a
//!   node's seal seed can read what was recorded to and from it.
//! - No replay protection: a relay can hand over a sealed envelope twice or
//!   withhold it (the TCP transport refuses replays itself).
//! - Lengths, timing and the header (session, sender, recipient, sequence
//!   number) remain visible.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use chacha20poly1305::{AeadInOut, Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use curve25519_dalek::MontgomeryPoint;
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use torcus_contract::ClusterConfig;
use tracing::{Instrument, debug, debug_span};
use zeroize::{Zeroize, Zeroizing};

use super::{SendError, Transport};
use crate::engine::{Channel, Envelope};

/// Prefix of every key derivation, so a key made here means nothing elsewhere.
pub const KEY_DOMAIN: &[u8] = b"torcus-seal-v1";
/// Bytes of the random nonce in front of a sealed payload.
pub const NONCE_LEN: usize = 24;
/// Bytes of the authentication tag at the end of a sealed payload.
pub const TAG_LEN: usize = 16;
/// Bytes a payload grows by when sealed.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Length of the header the seal covers.
const HEADER_LEN: usize = 32 + 1 + 2 + 2 + 1 + 8;

pub use torcus_contract::seal::public_key;

/// Reads a seal seed: 64 hexadecimal digits (surrounding white space is
/// ignored), as the operator writes `seal.key`.
pub fn read_seed(path: &Path) -> Result<Zeroizing<[u8; 32]>, SealKeyError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|source| SealKeyError::Io { path: path.display().to_string(), source })?,
    );
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), seed.as_mut()).map_err(|_| SealKeyError::Seed(path.display().to_string()))?;
    Ok(seed)
}

/// Why a seal could not be made or opened; the envelope is not sent or not
/// delivered.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// No seal key is known for the party (or it is this node).
    #[error("no seal key for party {0}")]
    UnknownPeer(u16),
    /// A unicast envelope is for another party than the one it is sealed
    /// for or was handed to.
    #[error("envelope for party {envelope} handed to party {recipient}")]
    Misaddressed {
        /// The party it is sealed for or handed to.
        recipient: u16,
        /// The party the envelope names.
        envelope: u16,
    },
    /// This node may seal only its own envelopes.
    #[error("envelope from party {0} is not this node's to seal")]
    NotOurs(u16),
    /// The payload is shorter than a nonce and a tag.
    #[error("sealed payload of {0} bytes is too short")]
    TooShort(usize),
    /// The seal does not open: payload or header altered, forged without
    /// the key of the party it names, or meant for another recipient.
    #[error("envelope claiming to be from party {0} does not open")]
    Unauthentic(u16),
    /// The payload is longer than the cipher can take.
    #[error("payload of {0} bytes cannot be sealed")]
    TooLarge(usize),
    /// The OS gave no randomness for a nonce.
    #[error("no randomness for a nonce: {0}")]
    Random(getrandom::Error),
}

impl SealError {
    /// The `reason` label of a dropped envelope.
    pub fn metric_label(&self) -> &'static str {
        "unsealable"
    }
}

/// Why the seal keys cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SealKeyError {
    /// The seed file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The seed file does not hold 64 hexadecimal digits.
    #[error("{0}: not a seal seed of 64 hexadecimal digits")]
    Seed(String),
    /// The configuration has no seal key for a party.
    #[error("no seal key (sealKey) for party {0} in the configuration")]
    MissingPeerKey(u16),
    /// A party's seal key is not 64 hexadecimal digits.
    #[error("seal key of party {0} is not 64 hexadecimal digits")]
    MalformedPeerKey(u16),
    /// A party's seal key is a point of small order: the shared secret
    /// would be known to anyone.
    #[error("seal key of party {0} is a point of small order")]
    WeakPeerKey(u16),
    /// The configuration lists another seal key for this node than the
    /// public half of its seed.
    #[error("the configuration's seal key for party {0} is not this node's")]
    Mismatch(u16),
}

/// Seals envelopes for, and opens envelopes from, the other parties.
pub struct Sealer {
    me: u16,
    /// Per peer: the cipher for what this node sends it, and the one for
    /// what it sends here. Each zeroizes its key on drop.
    peers: HashMap<u16, Pair>,
}

struct Pair {
    send: XChaCha20Poly1305,
    receive: XChaCha20Poly1305,
}

impl Sealer {
    /// The sealer of party `me` of `cluster_id` (`<namespace>/<cluster>`),
    /// from its seal seed and the X25519 public keys of the parties. An entry
    /// for `me` must be the public half of `seed`; a weak key is refused.
    pub fn new(
        me: u16,
        cluster_id: &str,
        seed: Zeroizing<[u8; 32]>,
        peers: &HashMap<u16, [u8; 32]>,
    ) -> Result<Self, SealKeyError> {
        let mut pairs = HashMap::with_capacity(peers.len());
        for (&party, public) in peers {
            if party == me {
                if *public != public_key(&seed) {
                    return Err(SealKeyError::Mismatch(me));
                }
                continue;
            }
            let mut shared = MontgomeryPoint(*public).mul_clamped(*seed);
            // A small-order public key makes the shared secret all zeros
            // whatever this node's seed (RFC 7748, section 6.1).
            if shared.0 == [0; 32] {
                return Err(SealKeyError::WeakPeerKey(party));
            }
            let pair = Pair {
                send: cipher(&directional_key(cluster_id, me, party, &shared.0)),
                receive: cipher(&directional_key(cluster_id, party, me, &shared.0)),
            };
            shared.zeroize();
            pairs.insert(party, pair);
        }
        Ok(Self { me, peers: pairs })
    }

    /// The sealer of party `me` from its seed and the `sealKey` of every
    /// party in `config`.
    pub fn from_config(me: u16, config: &ClusterConfig, seed: Zeroizing<[u8; 32]>) -> Result<Self, SealKeyError> {
        let mut peers = HashMap::with_capacity(config.peers.len());
        for peer in &config.peers {
            let text = peer.seal_key.as_deref().ok_or(SealKeyError::MissingPeerKey(peer.index))?;
            let mut public = [0u8; 32];
            hex::decode_to_slice(text, &mut public).map_err(|_| SealKeyError::MalformedPeerKey(peer.index))?;
            peers.insert(peer.index, public);
        }
        Self::new(me, &format!("{}/{}", config.namespace, config.cluster), seed, &peers)
    }

    /// This node's party index.
    pub fn me(&self) -> u16 {
        self.me
    }

    /// Seals `env` (this node's own, unicast to `to` or a broadcast) for
    /// party `to`; its payload becomes `nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, to: u16, mut env: Envelope) -> Result<Envelope, SealError> {
        if let Some(envelope) = env.to
            && envelope != to
        {
            return Err(SealError::Misaddressed { recipient: to, envelope });
        }
        if env.from != self.me {
            return Err(SealError::NotOurs(env.from));
        }
        let pair = self.peers.get(&to).ok_or(SealError::UnknownPeer(to))?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(SealError::Random)?;
        let mut sealed = Vec::with_capacity(OVERHEAD + env.payload.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&env.payload);
        let tag = pair
            .send
            .encrypt_inout_detached(&XNonce::from(nonce), &header(&env, to), (&mut sealed[NONCE_LEN..]).into())
            .map_err(|_| SealError::TooLarge(env.payload.len()))?;
        sealed.extend_from_slice(&tag);
        env.payload = sealed;
        Ok(env)
    }

    /// Opens `env`, sealed by the party it names for this node, and
    /// restores its payload.
    pub fn open(&self, mut env: Envelope) -> Result<Envelope, SealError> {
        if let Some(envelope) = env.to
            && envelope != self.me
        {
            return Err(SealError::Misaddressed { recipient: self.me, envelope });
        }
        let pair = self.peers.get(&env.from).ok_or(SealError::UnknownPeer(env.from))?;
        let len = env.payload.len();
        if len < OVERHEAD {
            return Err(SealError::TooShort(len));
        }
        let aad = header(&env, self.me);
        let mut payload = std::mem::take(&mut env.payload);
        let (nonce, rest) = payload.split_first_chunk::<NONCE_LEN>().ok_or(SealError::TooShort(len))?;
        let (_, tag) = rest.split_last_chunk::<TAG_LEN>().ok_or(SealError::TooShort(len))?;
        let (nonce, tag) = (XNonce::from(*nonce), Tag::from(*tag));
        payload.truncate(len - TAG_LEN);
        payload.drain(..NONCE_LEN);
        pair.receive
            .decrypt_inout_detached(&nonce, &aad, payload.as_mut_slice().into(), &tag)
            .map_err(|_| SealError::Unauthentic(env.from))?;
        env.payload = payload;
        Ok(env)
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut peers: Vec<u16> = self.peers.keys().copied().collect();
        peers.sort_unstable();
        f.debug_struct("Sealer").field("me", &self.me).field("peers", &peers).finish_non_exhaustive()
    }
}

/// A transport whose every envelope is sealed for its recipient before
/// `inner` carries it. What `inner` receives goes through [`spawn_opener`].
#[derive(Debug)]
pub struct SealedTransport<T> {
    inner: Arc<T>,
    sealer: Arc<Sealer>,
}

impl<T> SealedTransport<T> {
    /// Seals what is sent through `inner` with `sealer`.
    pub fn new(inner: Arc<T>, sealer: Arc<Sealer>) -> Self {
        Self { inner, sealer }
    }

    /// The transport that carries the sealed envelopes.
    pub fn inner(&self) -> &Arc<T> {
        &self.inner
    }

    /// The sealer.
    pub fn sealer(&self) -> &Arc<Sealer> {
        &self.sealer
    }
}

impl<T: Transport> Transport for SealedTransport<T> {
    async fn send(&self, to: u16, envelope: Envelope) -> Result<(), SendError> {
        let sealed = self.sealer.seal(to, envelope).map_err(|error| match error {
            // No key means no confidential way to the party.
            SealError::UnknownPeer(party) => SendError::NoRoute(party),
            SealError::TooLarge(len) => SendError::TooLarge(len),
            other => SendError::Connection { party: to, reason: other.to_string() },
        })?;
        self.inner.send(to, sealed).await
    }
}

/// Opens every envelope from `incoming` (where a sealed transport delivers)
/// and passes it on to `out`; one that does not open is dropped and counted
/// in `dropped` as `reason="unsealable"`. Ends when `incoming` closes (the
/// transports stop) or `out` does.
pub fn spawn_opener(
    sealer: Arc<Sealer>,
    mut incoming: mpsc::Receiver<Envelope>,
    dropped: IntCounterVec,
    out: mpsc::Sender<Envelope>,
) -> tokio::task::JoinHandle<()> {
    let span = debug_span!("seal_opener", me = sealer.me);
    tokio::spawn(
        async move {
            while let Some(env) = incoming.recv().await {
                let (from, to, channel) = (env.from, env.to, env.channel);
                match sealer.open(env) {
                    Ok(env) => {
                        if out.send(env).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        dropped.with_label_values(&[error.metric_label()]).inc();
                        // Not a warning: anyone who can post to the relay can
                        // make these, and the counter tells the story.
                        debug!(from, ?to, ?channel, %error, "dropped an envelope that does not open");
                    }
                }
            }
        }
        .instrument(span),
    )
}

/// `k(from→to)`; see the module documentation.
fn directional_key(cluster_id: &str, from: u16, to: u16, shared: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let digest = Sha256::new()
        .chain_update(KEY_DOMAIN)
        .chain_update((cluster_id.len() as u64).to_be_bytes())
        .chain_update(cluster_id.as_bytes())
        .chain_update(from.to_be_bytes())
        .chain_update(to.to_be_bytes())
        .chain_update(shared)
        .finalize();
    Zeroizing::new(digest.into())
}

fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    // The cipher keeps its own copy of the key and zeroizes it on drop.
    XChaCha20Poly1305::new(<&Key>::from(key))
}

/// The associated data: the envelope's header, with the party it is sealed for.
fn header(env: &Envelope, recipient: u16) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..32].copy_from_slice(&env.session);
    out[32] = match env.channel {
        Channel::Protocol => 0,
        Channel::Control => 1,
        Channel::Hello => 2,
    };
    out[33..35].copy_from_slice(&env.from.to_be_bytes());
    out[35..37].copy_from_slice(&recipient.to_be_bytes());
    out[37] = u8::from(env.to.is_none());
    out[38..].copy_from_slice(&env.seq.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "vault/demo";

    fn seed(party: u16) -> Zeroizing<[u8; 32]> {
        Zeroizing::new([party as u8 + 1; 32])
    }

    fn publics(n: u16) -> HashMap<u16, [u8; 32]> {
        (0..n).map(|i| (i, public_key(&seed(i)))).collect()
    }

    fn sealer(me: u16, n: u16) -> Sealer {
        Sealer::new(me, CLUSTER, seed(me), &publics(n)).unwrap()
    }

    fn env(from: u16, to: Option<u16>) -> Envelope {
        Envelope {
            session: [7; 32],
            channel: Channel::Protocol,
            from,
            to,
            seq: 42,
            payload: b"secret share of party".to_vec(),
        }
    }

    #[test]
    fn a_unicast_opens_at_its_recipient_with_its_payload() {
        let (a, b) = (sealer(0, 3), sealer(1, 3));
        let sealed = a.seal(1, env(0, Some(1))).unwrap();
        assert_eq!(sealed.payload.len(), env(0, None).payload.len() + OVERHEAD);
        assert!(!sealed.payload.windows(6).any(|w| w == b"secret"), "no plaintext in the sealed payload");
        assert_eq!((sealed.session, sealed.from, sealed.to, sealed.seq), ([7; 32], 0, Some(1), 42), "header in clear");
        assert_eq!(b.open(sealed).unwrap(), env(0, Some(1)));
    }

    #[test]
    fn a_broadcast_is_sealed_per_recipient_and_stays_a_broadcast() {
        let a = sealer(0, 3);
        let (b, c) = (sealer(1, 3), sealer(2, 3));
        let for_b = a.seal(1, env(0, None)).unwrap();
        let for_c = a.seal(2, env(0, None)).unwrap();
        assert_ne!(for_b.payload, for_c.payload);
        assert_eq!(b.open(for_b.clone()).unwrap(), env(0, None));
        assert_eq!(c.open(for_c).unwrap(), env(0, None));
        assert!(matches!(c.open(for_b), Err(SealError::Unauthentic(0))), "b's copy does not open at c");
    }

    #[test]
    fn the_same_envelope_seals_differently_each_time() {
        let a = sealer(0, 2);
        assert_ne!(a.seal(1, env(0, Some(1))).unwrap().payload, a.seal(1, env(0, Some(1))).unwrap().payload);
    }

    #[test]
    fn a_tampered_payload_or_header_is_refused() {
        let (a, b) = (sealer(0, 3), sealer(1, 3));
        let sealed = a.seal(1, env(0, Some(1))).unwrap();
        let mut flips: Vec<(&str, Envelope)> = Vec::new();
        for i in [0, NONCE_LEN, sealed.payload.len() - 1] {
            let mut e = sealed.clone();
            e.payload[i] ^= 1;
            flips.push(("payload", e));
        }
        flips.push(("seq", Envelope { seq: 43, ..sealed.clone() }));
        flips.push(("session", Envelope { session: [8; 32], ..sealed.clone() }));
        flips.push(("channel", Envelope { channel: Channel::Control, ..sealed.clone() }));
        flips.push(("broadcast flag", Envelope { to: None, ..sealed.clone() }));
        for (what, e) in flips {
            assert!(matches!(b.open(e), Err(SealError::Unauthentic(0))), "{what}");
        }
        // Claiming another sender selects another key: it does not open.
        assert!(matches!(b.open(Envelope { from: 2, ..sealed.clone() }), Err(SealError::Unauthentic(2))));
        let mut short = sealed;
        short.payload.truncate(OVERHEAD - 1);
        assert!(matches!(b.open(short), Err(SealError::TooShort(39))));
    }

    #[test]
    fn only_the_recipient_opens() {
        let (a, c) = (sealer(0, 3), sealer(2, 3));
        let sealed = a.seal(1, env(0, Some(1))).unwrap();
        assert!(matches!(c.open(sealed.clone()), Err(SealError::Misaddressed { recipient: 2, envelope: 1 })));
        // Even when the envelope is readdressed to c, c's key is another.
        assert!(matches!(c.open(Envelope { to: Some(2), ..sealed }), Err(SealError::Unauthentic(0))));
    }

    #[test]
    fn a_forger_without_the_senders_key_is_refused() {
        let b = sealer(1, 3);
        // Party 2 knows its own key, not party 0's: as "party 0" it fails.
        let c = sealer(2, 3);
        let forged = Envelope { from: 0, ..c.seal(1, env(2, Some(1))).unwrap() };
        assert!(matches!(b.open(forged), Err(SealError::Unauthentic(0))));
        // Someone outside the cluster, with a key of its own, is no peer.
        let mut with_outsider = publics(3);
        with_outsider.insert(9, public_key(&seed(9)));
        let outsider = Sealer::new(9, CLUSTER, seed(9), &with_outsider).unwrap();
        assert!(matches!(b.open(outsider.seal(1, env(9, Some(1))).unwrap()), Err(SealError::UnknownPeer(9))));
        // Nor does a copy of a sealer for another cluster open here.
        let elsewhere = Sealer::new(0, "vault/other", seed(0), &publics(3)).unwrap();
        assert!(matches!(b.open(elsewhere.seal(1, env(0, Some(1))).unwrap()), Err(SealError::Unauthentic(0))));
    }

    #[test]
    fn seal_refuses_what_is_not_ours_or_misaddressed() {
        let a = sealer(0, 3);
        assert!(matches!(a.seal(2, env(0, Some(1))), Err(SealError::Misaddressed { recipient: 2, envelope: 1 })));
        assert!(matches!(a.seal(1, env(2, Some(1))), Err(SealError::NotOurs(2))));
        assert!(matches!(a.seal(5, env(0, None)), Err(SealError::UnknownPeer(5))));
        assert!(matches!(a.seal(0, env(0, None)), Err(SealError::UnknownPeer(0))), "no key for oneself");
    }

    #[test]
    fn directional_keys_differ_and_both_ends_agree() {
        let shared_a = MontgomeryPoint(public_key(&seed(1))).mul_clamped(*seed(0));
        let shared_b = MontgomeryPoint(public_key(&seed(0))).mul_clamped(*seed(1));
        assert_eq!(shared_a, shared_b);
        let there = directional_key(CLUSTER, 0, 1, &shared_a.0);
        let back = directional_key(CLUSTER, 1, 0, &shared_a.0);
        assert_ne!(*there, *back);
        assert_ne!(*there, *directional_key("vault/other", 0, 1, &shared_a.0));
        // Each direction seals under its own key: a reply does not open as
        // if sent the other way.
        let (a, b) = (sealer(0, 2), sealer(1, 2));
        let reply = b.seal(0, env(1, Some(0))).unwrap();
        assert_eq!(a.open(reply.clone()).unwrap(), env(1, Some(0)));
        let reflected = Envelope { from: 0, to: Some(1), ..reply };
        assert!(matches!(b.open(reflected), Err(SealError::Unauthentic(0))));
    }

    #[test]
    fn two_nodes_built_from_each_others_publics_agree() {
        let (s0, s1) = (Zeroizing::new([0x11; 32]), Zeroizing::new([0x22; 32]));
        let (p0, p1) = (public_key(&s0), public_key(&s1));
        let a = Sealer::new(3, CLUSTER, s0, &HashMap::from([(7, p1)])).unwrap();
        let b = Sealer::new(7, CLUSTER, s1, &HashMap::from([(3, p0)])).unwrap();
        assert_eq!(b.open(a.seal(7, env(3, Some(7))).unwrap()).unwrap(), env(3, Some(7)));
        assert_eq!(a.open(b.seal(3, env(7, None)).unwrap()).unwrap(), env(7, None));
    }

    #[test]
    fn keys_are_checked_when_built() {
        let mut peers = publics(3);
        peers.insert(0, public_key(&seed(5)));
        assert!(matches!(Sealer::new(0, CLUSTER, seed(0), &peers), Err(SealKeyError::Mismatch(0))));
        let mut peers = publics(3);
        // The identity (u = 0) and u = 1 are of small order.
        peers.insert(2, [0; 32]);
        assert!(matches!(Sealer::new(0, CLUSTER, seed(0), &peers), Err(SealKeyError::WeakPeerKey(2))));
        let mut one = [0; 32];
        one[0] = 1;
        peers.insert(2, one);
        assert!(matches!(Sealer::new(0, CLUSTER, seed(0), &peers), Err(SealKeyError::WeakPeerKey(2))));
    }

    #[test]
    fn from_config_reads_every_peers_seal_key() {
        let mut config = ClusterConfig::sample("demo", "vault", 3, 2);
        assert!(matches!(Sealer::from_config(0, &config, seed(0)), Err(SealKeyError::MissingPeerKey(0))));
        for peer in &mut config.peers {
            peer.seal_key = Some(hex::encode(public_key(&seed(peer.index))));
        }
        let a = Sealer::from_config(0, &config, seed(0)).unwrap();
        assert_eq!(sealer(1, 3).open(a.seal(1, env(0, Some(1))).unwrap()).unwrap(), env(0, Some(1)));
        config.peers[2].seal_key = Some("zz".repeat(32));
        assert!(matches!(Sealer::from_config(0, &config, seed(0)), Err(SealKeyError::MalformedPeerKey(2))));
    }

    #[test]
    fn read_seed_takes_64_hex_digits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        std::fs::write(&path, format!("{}\n", hex::encode([0xAB; 32]))).unwrap();
        assert_eq!(*read_seed(&path).unwrap(), [0xAB; 32]);
        std::fs::write(&path, "abc").unwrap();
        assert!(matches!(read_seed(&path), Err(SealKeyError::Seed(_))));
        assert!(matches!(read_seed(&dir.path().join("missing")), Err(SealKeyError::Io { .. })));
    }

    /// Keeps what it is asked to send.
    #[derive(Debug, Default)]
    struct Capture(std::sync::Mutex<Vec<(u16, Envelope)>>);

    impl Transport for Capture {
        async fn send(&self, to: u16, envelope: Envelope) -> Result<(), SendError> {
            self.0.lock().unwrap().push((to, envelope));
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_wrapper_seals_and_the_opener_passes_on_only_what_opens() {
        let inner = Arc::new(Capture::default());
        let transport = SealedTransport::new(Arc::clone(&inner), Arc::new(sealer(0, 3)));
        transport.send(1, env(0, Some(1))).await.unwrap();
        transport.send(2, env(0, None)).await.unwrap();
        assert!(matches!(transport.send(7, env(0, None)).await, Err(SendError::NoRoute(7))));
        let sent = inner.0.lock().unwrap().clone();
        assert_eq!(sent.iter().map(|(to, e)| (*to, e.to)).collect::<Vec<_>>(), [(1, Some(1)), (2, None)]);
        assert!(sent.iter().all(|(_, e)| e.payload.len() == env(0, None).payload.len() + OVERHEAD));

        let metrics = super::super::TransportMetrics::register(&prometheus::Registry::new(), "relay").unwrap();
        let (tx, incoming) = mpsc::channel(8);
        let (out_tx, mut out) = mpsc::channel(8);
        let opener = spawn_opener(Arc::new(sealer(1, 3)), incoming, metrics.dropped.clone(), out_tx);
        tx.send(env(2, Some(1))).await.unwrap(); // in clear, as party 2
        tx.send(sent[1].1.clone()).await.unwrap(); // party 2's copy of the broadcast
        tx.send(sent[0].1.clone()).await.unwrap();
        drop(tx);
        opener.await.unwrap();
        assert_eq!(out.recv().await, Some(env(0, Some(1))));
        assert_eq!(out.recv().await, None);
        assert_eq!(metrics.dropped.with_label_values(&["unsealable"]).get(), 2);
    }

    #[test]
    fn debug_shows_no_key_material() {
        let text = format!("{:?}", sealer(0, 3));
        assert_eq!(text, "Sealer { me: 0, peers: [1, 2], .. }");
    }
}
