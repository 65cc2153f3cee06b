//! Nodes whose clocks drifted (a test-only offset of the clock grants are
//! checked by, `--test-clock-offset-secs`): a grant is refused by a node
//! whose clock is more than the allowed skew behind its issuer, or past the
//! grant's expiry ahead of it, with a reason that says by how much; within
//! the window, the same nodes sign.

use std::path::Path;

use torcus_contract::{CLOCK_SKEW_SECS, GrantKind};
use torcus_node::testing::{Cluster, digest};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_torcus-node"))
}

/// A grant for `participants` whose initiator is `initiator`.
fn grant_led_by(cluster: &Cluster, participants: &[u16], initiator: u16, seed: u8) -> torcus_contract::SignedGrant {
    loop {
        let kind = GrantKind::Sign { key: "default".into(), message: digest([seed; 32]), derivation_path: vec![] };
        let grant = cluster.grant(kind, participants.to_vec());
        if grant.grant.initiator() == initiator {
            return grant;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_refused_outside_the_clock_window_and_taken_inside_it() {
    let mut cluster = Cluster::new(binary(), 3, 2, "quic").await;
    cluster.wait_ready().await;
    let public_key = cluster.keygen("default").await;

    // Node 1 runs 100 s behind (beyond the skew allowed), node 2 200 s ahead
    // (past the test grants' 120 s lifetime).
    let behind = -(i64::try_from(CLOCK_SKEW_SECS).unwrap() + 70);
    cluster.kill(1);
    cluster.start_with_args(1, &[&format!("--test-clock-offset-secs={behind}")]);
    cluster.kill(2);
    cluster.start_with_args(2, &["--test-clock-offset-secs=200"]);
    cluster.wait_ready().await;

    let (status, body) = cluster.post(1, "/p2p/sign", &grant_led_by(&cluster, &[1, 2], 1, 1)).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("not_yet_valid")), "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("100 s ahead of this node's clock") || error.contains("101 s ahead"), "{body}");
    let (status, body) = cluster.post(2, "/p2p/sign", &grant_led_by(&cluster, &[1, 2], 2, 2)).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("expired")), "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("s before this node's clock"), "{body}");
    // A participant that refuses ends the session its initiator runs.
    let (status, body) = cluster.post(0, "/p2p/sign", &grant_led_by(&cluster, &[0, 1], 0, 3)).await;
    assert_ne!(status, 200, "{body}");
    for (i, reason) in [(1, "not_yet_valid"), (2, "expired")] {
        let metrics = cluster.metrics(i).await;
        let line = format!(r#"torcus_node_grants_rejected_total{{reason="{reason}"}}"#);
        assert!(metrics.lines().any(|l| l.starts_with(&line)), "node {i}: {metrics}");
    }

    // Within the window: 20 s behind and 20 s ahead, the same nodes sign.
    cluster.kill(1);
    cluster.start_with_args(1, &["--test-clock-offset-secs=-20"]);
    cluster.kill(2);
    cluster.start_with_args(2, &["--test-clock-offset-secs=20"]);
    cluster.wait_ready().await;
    let body = cluster.sign("default", vec![1, 2], digest([4; 32]), vec![]).await;
    assert_eq!(body["publicKey"], public_key.as_str(), "{body}");
}
