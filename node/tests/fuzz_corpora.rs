//! Every input of the node's fuzz targets' corpora (`fuzz/corpus/`, the
//! seeds) and every input a fuzzer ever crashed on (`fuzz/regressions/`,
//! kept once the bug is fixed), through the same checks as the targets
//! (`torcus_node::fuzz_checks`), on stable Rust, in every test run.

use std::path::Path;

#[test]
fn every_seed_and_every_crash_once_found_passes_its_targets_check() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    torcus_contract::fuzz_checks::replay_corpora(&fuzz, &torcus_node::fuzz_checks::TARGETS);
    // And each check has its target, which the fuzzing test runs.
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for (target, _) in torcus_node::fuzz_checks::TARGETS {
        assert!(manifest.contains(&format!("name = \"{target}\"")), "fuzz/Cargo.toml has no target {target}");
        assert!(fuzz.join("fuzz_targets").join(format!("{target}.rs")).exists(), "no fuzz_targets/{target}.rs");
    }
}

/// The checks see what they look for: the sealed seed opens (and its
/// plaintext is the one original), a signed TCP frame is accepted and one
/// flipped bit of it is not, and a well-formed stream of frames reads back.
#[tokio::test]
async fn the_checks_accept_authentic_inputs_and_refuse_altered_ones() {
    use torcus_node::fuzz_checks::*;
    let sealed = seal_as_party_0(sealed_original());
    let bytes = torcus_node::transport::frame::encode(&sealed);
    assert!(sealed_envelope_opened(&bytes));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(!sealed_envelope_opened(&flipped));

    let key = ed25519_dalek::SigningKey::from_bytes(&IDENTITY_SEEDS[0]);
    let body = torcus_node::transport::frame::encode(&sealed_original());
    let frame = torcus_node::transport::tcp::sign_frame(&key, 0, 1, TCP_NOW_MS, 7, &body);
    assert!(tcp_frame_accepted(&frame[4..]));
    let mut forged = frame[4..].to_vec();
    forged[20] ^= 1;
    assert!(!tcp_frame_accepted(&forged));
    let late = torcus_node::transport::tcp::sign_frame(&key, 0, 1, TCP_NOW_MS + TCP_WINDOW_MS + 1, 7, &body);
    assert!(!tcp_frame_accepted(&late[4..]), "outside the window");

    let mut stream = Vec::new();
    for _ in 0..2 {
        torcus_node::transport::frame::write(&mut stream, &sealed_original()).await.unwrap();
    }
    assert_eq!(frames_read(&stream), 2);
    assert_eq!(frames_read(&stream[..stream.len() - 1]), 1, "a cut frame is not read");
}
