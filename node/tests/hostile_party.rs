//! A hostile party inside the protocol, among real node processes: node 2
//! runs its signing sessions with a test-only hook (`--test-misbehaviour`)
//! that tampers with what it sends once the handshake is done — garbage,
//! silence, every message twice, an earlier round's message in place of
//! the current one, its valid messages of its previous session, or its
//! messages out of order. Its messages stay authenticated: it is an
//! insider, not a stranger on the network.
//!
//! Each session it breaks ends at the honest initiator with 503 (a session
//! that ran into its deadline would answer 504), the reason and the blame
//! naming node 2, and no signature; the next request, without it, signs
//! (checked with libsecp256k1). Two do no harm, and those sessions sign:
//! reordering (the protocol takes a later round's message early) and exact
//! duplicates (dropped as a transport's repeat). An earlier round's message
//! sent again in place of the current one is such a repeat: the current
//! round's message never comes, and node 2 is named silent. (A different
//! message for a round already seen is named at once: the engine's own
//! tests cover it; a valid one can only come from another session, which
//! is `replay`.)

use std::path::Path;
use std::time::{Duration, Instant};

use torcus_contract::GrantKind;
use torcus_node::testing::{Cluster, digest, verify};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_torcus-node"))
}

/// A signing grant of `digest` for `participants` whose initiator is `initiator`.
fn grant_led_by(cluster: &Cluster, participants: &[u16], initiator: u16, d: [u8; 32]) -> torcus_contract::SignedGrant {
    loop {
        let kind = GrantKind::Sign { key: "default".into(), message: digest(d), derivation_path: vec![] };
        let grant = cluster.grant(kind, participants.to_vec());
        if grant.grant.initiator() == initiator {
            return grant;
        }
    }
}

/// How many messages node 2's hook reported altering, per session, from its
/// log (colours taken out).
fn altered(log: &str) -> Vec<usize> {
    let mut plain = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(start) = rest.find('\x1b') {
        plain.push_str(&rest[..start]);
        rest = rest[start..].split_once('m').map_or("", |(_, after)| after);
    }
    plain.push_str(rest);
    plain
        .lines()
        .filter(|l| l.contains("TEST HOOK: tampered with a signing session"))
        .filter_map(|l| l.split("altered=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// Node 2's hook reports, once it made `count` (its side of a session ends
/// when the Abort reaches it, after the initiator answered), or after 30 s.
async fn reports(cluster: &Cluster, count: usize) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tampered = altered(&cluster.log(2));
        if tampered.len() >= count || Instant::now() > deadline {
            return tampered;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_tampering_with_its_messages_is_named_and_the_others_sign_without_it() {
    let mut cluster = Cluster::new(binary(), 3, 2, "quic").await;
    cluster.wait_ready().await;
    let public_key = cluster.keygen("default").await;
    // (mode, the reason the honest initiator gives)
    let modes = [
        ("garbage", "misbehaved"),
        ("silent", "silent"),
        ("duplicate", "signed"),
        // A repeat of an earlier round's message is dropped; the round's
        // own message never comes.
        ("wrong-round", "silent"),
        ("replay", "misbehaved"),
        ("reorder", "signed"),
    ];
    for (n, (mode, expected)) in modes.into_iter().enumerate() {
        let n = u8::try_from(n).unwrap();
        cluster.kill(2);
        cluster.start_with_args(2, &["--test-corrupt-signing=2", &format!("--test-misbehaviour={mode}")]);
        cluster.wait_ready().await;
        if mode == "replay" {
            // What it will replay: a session it ran before, untouched (it
            // had none before to take messages from).
            let body = cluster.sign("default", vec![0, 2], digest([0xa0; 32]), vec![]).await;
            assert_eq!(body["publicKey"], public_key.as_str());
            assert_eq!(reports(&cluster, 1).await, [0], "{mode}: the first session goes through untouched");
        }
        let d = [0x10 + n; 32];
        let started = Instant::now();
        let (status, body) = cluster.post(0, "/p2p/sign", &grant_led_by(&cluster, &[0, 2], 0, d)).await;
        let took = started.elapsed();
        if expected == "signed" {
            assert_eq!(status, 200, "{mode}: {body}");
            verify(&body, &d);
            assert_eq!(body["publicKey"], public_key.as_str());
        } else {
            assert_eq!(status, 503, "{mode}: {body}\n--- node 0\n{}", cluster.log(0));
            assert_eq!(body["reason"], expected, "{mode}: {body}");
            assert_eq!(body["blamed"], 2, "{mode}: {body}");
            assert!(body["error"].as_str().unwrap_or_default().contains("party 2"), "{mode}: {body}");
            assert!(body.get("r").is_none() && body.get("signature").is_none(), "{mode}: {body}");
        }
        // The hook really tampered with that session (it reports when node
        // 2's side of the session ends, once the Abort reached it).
        let sessions_before = usize::from(mode == "replay");
        let tampered = reports(&cluster, sessions_before + 1).await;
        assert!(
            tampered.len() == sessions_before + 1 && tampered[sessions_before] > 0,
            "{mode}: {tampered:?}\n{}",
            cluster.log(2)
        );
        eprintln!("{mode}: {status} in {took:?}: {}", body["error"]);

        // The next request, without node 2, signs.
        let d = [0x30 + n; 32];
        let body = cluster.sign("default", vec![0, 1], digest(d), vec![]).await;
        assert_eq!(body["publicKey"], public_key.as_str());
    }
    // The honest node counted the sessions node 2 broke by what it did.
    let metrics = cluster.metrics(0).await;
    let count = |outcome: &str| -> f64 {
        let line = format!(r#"torcus_node_sessions_total{{kind="any",outcome="{outcome}"}} "#);
        metrics.lines().find_map(|l| l.strip_prefix(&line)?.parse().ok()).unwrap_or(0.0)
    };
    assert_eq!((count("misbehaved"), count("silent")), (2.0, 2.0), "{metrics}");
}
