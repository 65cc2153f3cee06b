//! The checks of the node's cargo-fuzz targets (`fuzz/`), shared with the
//! stable replay of their corpora (`tests/fuzz_corpora.rs`): the decoders
//! a peer's bytes reach before anything else — the length-prefixed frames
//! of QUIC streams and TCP connections, the TCP transport's signed frames,
//! and the sealed envelopes of the relay and hybrid modes. Each check
//! panics only on a bug: a panic of the decoder, an encoding that does not
//! round-trip, or an input accepted as authentic that its signer never made.
//! Pure functions over fixed keys; no test hook (the `fuzz-checks` feature
//! changes nothing a node does).

use std::collections::HashMap;

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::engine::{Channel, Envelope};
use crate::transport::{frame, seal, tcp};

/// A target's check.
pub type Check = fn(&[u8]);

/// Every target, by the name of its binary in `fuzz/`.
pub const TARGETS: [(&str, Check); 3] =
    [("stream_frames", stream_frames), ("tcp_frame", tcp_frame), ("sealed_envelope", sealed_envelope)];

/// Seeds of the parties' TCP identity (Ed25519) keys in these checks.
pub const IDENTITY_SEEDS: [[u8; 32]; 3] = [[10; 32], [11; 32], [12; 32]];
/// Seeds of the parties' X25519 seal keys.
pub const SEAL_SEEDS: [[u8; 32]; 2] = [[20; 32], [21; 32]];
/// The cluster the sealed envelopes belong to.
pub const SEAL_CLUSTER: &str = "fuzz/vault";
/// The only envelope party 0 ever sealed for party 1 under [`SEAL_SEEDS`]
/// (the seed corpus holds it, sealed): anything else that opens is forged.
pub fn sealed_original() -> Envelope {
    Envelope {
        session: [5; 32],
        channel: Channel::Protocol,
        from: 0,
        to: Some(1),
        seq: 9,
        payload: b"a protocol message".to_vec(),
    }
}
/// The time the TCP frames are checked at (ms since the epoch).
pub const TCP_NOW_MS: u64 = 1_800_000_000_000;
/// The TCP frames' replay window around it.
pub const TCP_WINDOW_MS: u64 = 60_000;

/// Length-prefixed frames one after another, as a QUIC stream or a TCP
/// connection delivers them, read until the end or the first error: each
/// frame read writes back to exactly the bytes it was read from, and a
/// frame announced longer than the cap is refused before it is read.
pub fn stream_frames(data: &[u8]) {
    frames_read(data);
}

/// [`stream_frames`], saying how many frames it read.
pub fn frames_read(data: &[u8]) -> usize {
    futures::executor::block_on(async {
        let (mut input, mut frames) = (data, 0);
        loop {
            let before = input.len();
            match frame::read(&mut input).await {
                Ok(Some(env)) => {
                    let consumed = &data[data.len() - before..data.len() - input.len()];
                    let mut again = Vec::new();
                    frame::write(&mut again, &env).await.expect("a frame read writes back");
                    assert_eq!(again, consumed, "two framings of one envelope");
                    frames += 1;
                }
                Ok(None) | Err(_) => return frames,
            }
        }
    })
}

/// A TCP frame body (sender, timestamp, nonce, signature, envelope) as
/// party 1 receives it from parties 0 and 2: accepted only when its named
/// sender's key signed exactly these bytes for party 1 (Ed25519 signs
/// deterministically: signing the fields again gives them back).
pub fn tcp_frame(data: &[u8]) {
    tcp_frame_accepted(data);
}

/// [`tcp_frame`], saying whether party 1 accepted the frame.
pub fn tcp_frame_accepted(data: &[u8]) -> bool {
    let keys: HashMap<u16, SigningKey> =
        [(0u16, IDENTITY_SEEDS[0]), (2, IDENTITY_SEEDS[2])].map(|(i, s)| (i, SigningKey::from_bytes(&s))).into();
    let public = keys.iter().map(|(i, k)| (*i, k.verifying_key())).collect();
    let Ok(sealed) = tcp::open_frame(data, 1, &public, TCP_WINDOW_MS, TCP_NOW_MS) else { return false };
    let key = &keys[&sealed.sender];
    let again = tcp::sign_frame(key, sealed.sender, 1, sealed.timestamp_ms, sealed.nonce, sealed.body);
    assert_eq!(&again[4..], data, "a frame accepted that its sender did not sign");
    if let Ok(env) = frame::decode(sealed.body) {
        assert_eq!(frame::encode(&env), sealed.body);
    }
    true
}

/// An envelope (in the frame encoding) as party 1 opens it from party 0:
/// refused, or exactly [`sealed_original`].
pub fn sealed_envelope(data: &[u8]) {
    sealed_envelope_opened(data);
}

/// [`sealed_envelope`], saying whether party 1 opened the envelope.
pub fn sealed_envelope_opened(data: &[u8]) -> bool {
    let Ok(env) = frame::decode(data) else { return false };
    let peers: HashMap<u16, [u8; 32]> = SEAL_SEEDS.iter().zip(0u16..).map(|(s, i)| (i, seal::public_key(s))).collect();
    let sealer = seal::Sealer::new(1, SEAL_CLUSTER, Zeroizing::new(SEAL_SEEDS[1]), &peers).expect("sealer");
    let Ok(opened) = sealer.open(env) else { return false };
    assert_eq!(opened, sealed_original(), "an envelope opened that party 0 never sealed");
    true
}

/// Party 0's sealer under [`SEAL_SEEDS`], for the seed corpus.
pub fn seal_as_party_0(env: Envelope) -> Envelope {
    let peers: HashMap<u16, [u8; 32]> = SEAL_SEEDS.iter().zip(0u16..).map(|(s, i)| (i, seal::public_key(s))).collect();
    let sealer = seal::Sealer::new(0, SEAL_CLUSTER, Zeroizing::new(SEAL_SEEDS[0]), &peers).expect("sealer");
    sealer.seal(1, env).expect("sealed")
}
