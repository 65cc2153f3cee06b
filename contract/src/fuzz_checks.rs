//! What each fuzz target of `fuzz/` checks of one input, shared with the
//! regression test that replays the checked-in corpora and every input a
//! fuzzer once crashed on (`contract/tests/fuzz_corpora.rs`), so a crash
//! found once stays a plain test on stable Rust. Each check panics on a
//! violation and returns quietly on input that is merely refused.

use ed25519_dalek::SigningKey;

use crate::envelope::{decode, encode};
use crate::{ClusterConfig, Control, MemoryUsedSessions, RegistryMessage, SignedGrant, SignedMessage};

/// The issuer key the `grant` target trusts; its seeds are signed with it.
pub const GRANT_ISSUER_SEED: [u8; 32] = [1; 32];

/// What a target checks of one input.
pub type Check = fn(&[u8]);

/// Every target, by name, with its check.
pub const TARGETS: [(&str, Check); 5] = [
    ("envelope", envelope),
    ("control", control),
    ("grant", grant),
    ("registry_message", registry_message),
    ("cluster_config", cluster_config),
];

/// A frame body: an error, or the one envelope that encodes back to it.
pub fn envelope(data: &[u8]) {
    if let Ok(env) = decode(data) {
        assert_eq!(encode(&env), data, "two encodings of one envelope");
    }
}

/// A session control message from a peer: an error, or a message that
/// keeps its meaning through its own encoding.
pub fn control(data: &[u8]) {
    if let Ok(control) = serde_json::from_slice::<Control>(data) {
        let _ = control.session_id();
        let again = serde_json::to_vec(&control).expect("a decoded message encodes");
        let back: Control = serde_json::from_slice(&again).expect("an encoded message decodes");
        assert_eq!(back, control);
    }
}

/// A signed grant from a Proposal, verified for parties 0 to 2: a grant
/// that verifies is well-formed, for a member, and verifies only once.
pub fn grant(data: &[u8]) {
    let Ok(signed) = serde_json::from_slice::<SignedGrant>(data) else { return };
    let issuer = SigningKey::from_bytes(&GRANT_ISSUER_SEED).verifying_key();
    let now = signed.grant.issued_at.saturating_add(1);
    for me in [0u16, 1, 2] {
        let mut used = MemoryUsedSessions::with_clock(|| 0);
        if let Ok(grant) = signed.verify(&issuer, me, now, &mut used) {
            assert!(grant.check().is_ok(), "a malformed grant verified");
            assert!(grant.participants.contains(&me), "a grant verified for a non-member");
            assert!(signed.verify(&issuer, me, now, &mut used).is_err(), "a grant verified twice");
        }
    }
}

/// A registry request: the signed envelope, then its payload's message.
pub fn registry_message(data: &[u8]) {
    let Ok(signed) = serde_json::from_slice::<SignedMessage>(data) else { return };
    let _ = crate::registry::signing_input(&signed.payload);
    if let Ok(message) = serde_json::from_str::<RegistryMessage>(&signed.payload) {
        let _ = (message.node(), message.sent_at());
    }
}

/// The cluster configuration a node reads at start-up: an error, or a
/// configuration whose check runs.
pub fn cluster_config(data: &[u8]) {
    if let Ok(config) = ClusterConfig::from_json(data) {
        let _ = config.check();
    }
}

/// Runs every input of `targets`' checked-in corpora (`<fuzz>/corpus/<target>/`,
/// the seeds) and every input a fuzzer ever crashed on
/// (`<fuzz>/regressions/<target>/`) through its target's check; panics
/// naming the first input that fails, or a target without seeds.
pub fn replay_corpora(fuzz: &std::path::Path, targets: &[(&str, Check)]) {
    for (target, check) in targets {
        let mut seeds = 0;
        for folder in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join(target)) else { continue };
            for entry in entries {
                let path = entry.expect("a corpus entry").path();
                let input = std::fs::read(&path).expect("a corpus input");
                if std::panic::catch_unwind(|| check(&input)).is_err() {
                    panic!("{target}: {} fails its check", path.display());
                }
                seeds += usize::from(folder == "corpus");
            }
        }
        assert!(seeds > 0, "fuzz target {target} has no seed corpus in fuzz/corpus/{target}");
    }
}
