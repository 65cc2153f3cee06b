//! The MPC protocol messages a node's engine decodes from a peer's frame
//! (JSON, `node/src/engine.rs`): keygen, aux info and signing messages of
//! the types the node runs (secp256k1, SecurityLevel128, SHA-256). The
//! first byte picks the type. Whatever the bytes: an error or a message, no
//! panic, no runaway allocation (libFuzzer's RSS limit).
#![no_main]

use cggmp24::security_level::SecurityLevel128 as Level;
use cggmp24::supported_curves::Secp256k1 as Curve;
use sha2_v010::Sha256;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 3 {
        0 => drop(serde_json::from_slice::<cggmp24_keygen::msg::threshold::Msg<Curve, Level, Sha256>>(body)),
        1 => drop(serde_json::from_slice::<cggmp24::key_refresh::msg::Msg<Sha256, Level>>(body)),
        _ => drop(serde_json::from_slice::<cggmp24::signing::msg::Msg<Curve, Sha256>>(body)),
    }
});
