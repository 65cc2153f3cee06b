//! Keys of three schemes in one cluster, on a real API server with the
//! operator and real `torcus-node` processes: threshold ECDSA, BIP-340
//! Schnorr for Taproot and Ed25519 (FROST). Each key signs through a
//! SigningRequest over QUIC and, after the cluster rolls to it, over the
//! operator's relay; every signature is checked here with code that shares
//! nothing with Torcus (`torcus_e2e::independent`: libsecp256k1 with the
//! BIP-341 tweak and BIP-32 written from the specifications, OpenSSL for
//! Ed25519). Requests a scheme cannot sign end with the reason, schemes are
//! fixed at admission, and a participant killed during a FROST session is
//! retried around.

use std::time::Duration;

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use torcus_crds::{KeyScheme, KeyStatus, MpcCluster, SigningPhase, SigningRequest};
use torcus_e2e::independent;
use torcus_e2e::testing::{TestNamespace, eventually, roll_transport};

use super::wait_final;

/// Aux info (for the ECDSA key) and three keygens on 2 cores, plus pod
/// start-up, while another test's cluster may be busy beside it.
const KEYGEN_WAIT: Duration = Duration::from_secs(420);
const SIGN_WAIT: Duration = Duration::from_secs(60);

fn cluster(name: &str, transport: &str, keys: &[&str], schemes: serde_json::Value) -> MpcCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mpc.torcus.io/v1alpha1",
        "kind": "MpcCluster",
        "metadata": {"name": name},
        "spec": {
            "nodes": 3, "threshold": 2, "transport": {"mode": transport},
            "keys": keys, "keySchemes": schemes,
            // The full protocol for ECDSA too: no pools to fill beside the tests.
            "presignatures": {"poolSize": 0},
        },
    }))
    .unwrap()
}

fn request(name: &str, key: &str, spec: serde_json::Value) -> SigningRequest {
    let mut full = serde_json::json!({"cluster": "vault", "key": key});
    if let (Some(full), Some(spec)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(spec.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mpc.torcus.io/v1alpha1",
        "kind": "SigningRequest",
        "metadata": {"name": name},
        "spec": full,
    }))
    .unwrap()
}

/// Creates the request and waits until it ends.
async fn sign(ns: &TestNamespace, name: &str, key: &str, spec: serde_json::Value) -> SigningRequest {
    let srs: Api<SigningRequest> = ns.api();
    srs.create(&PostParams::default(), &request(name, key, spec)).await.unwrap();
    wait_final(ns, name, SIGN_WAIT).await
}

/// Waits until cluster `vault` is Ready with all of its keys.
async fn ready_keys(ns: &TestNamespace) -> Vec<KeyStatus> {
    let clusters: Api<MpcCluster> = ns.api();
    eventually("cluster Ready with every key", KEYGEN_WAIT, || async {
        let status = clusters.get("vault").await?.status.unwrap_or_default();
        let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(ready.then_some(status.keys))
    })
    .await
    .unwrap()
}

fn key<'a>(keys: &'a [KeyStatus], name: &str) -> &'a KeyStatus {
    keys.iter().find(|k| k.name == name).unwrap_or_else(|| panic!("no key {name} in {keys:?}"))
}

/// The signature of a completed request, 64 bytes of hex, and its scheme.
fn signature(sr: &SigningRequest) -> (Option<KeyScheme>, String) {
    let status = sr.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(SigningPhase::Completed), "{}: {:?}", sr.name_any(), status.reason);
    let sig = status.signature.as_ref().unwrap();
    let bytes = sig.bytes.clone().expect("the signature's bytes");
    assert_eq!(bytes, format!("{}{}", sig.r, sig.s));
    (sig.scheme, bytes)
}

/// The Taproot output key a BIP-340 key signs under at `path`, computed
/// here from the key's compressed form and chain code in its status.
fn output_key(btc: &KeyStatus, path: &[u32]) -> secp256k1::XOnlyPublicKey {
    let compressed = hex::decode(btc.compressed_public_key.as_deref().unwrap()).unwrap();
    let chain: [u8; 32] = hex::decode(btc.chain_code.as_deref().unwrap()).unwrap().try_into().unwrap();
    let internal = independent::bip32_child(&compressed, &chain, path).unwrap();
    independent::taproot_output_key(&internal).unwrap()
}

/// One request per scheme (and a derived Taproot key), each checked
/// independently; `tag` keeps the names and messages of rounds apart.
async fn every_key_signs(ns: &TestNamespace, keys: &[KeyStatus], tag: &str) {
    let ecdsa = key(keys, "default").public_key.clone().unwrap();
    let digest: [u8; 32] = Sha256::digest(format!("ecdsa {tag}")).into();
    let sr = sign(ns, &format!("eth-{tag}"), "default", serde_json::json!({"digest": hex::encode(digest)})).await;
    independent::verify_status(sr.status.as_ref().unwrap(), &digest, &ecdsa).unwrap();
    assert_eq!(signature(&sr).0, None, "ECDSA is the default scheme");

    // BIP-340: a sighash (a requester's digest) for the key-path spend of
    // the key's Taproot output, and a payload at a derived path.
    let btc = key(keys, "btc");
    let sighash: [u8; 32] = Sha256::digest(format!("taproot sighash {tag}")).into();
    let sr = sign(ns, &format!("btc-{tag}"), "btc", serde_json::json!({"digest": hex::encode(sighash)})).await;
    let (scheme, sig) = signature(&sr);
    assert_eq!(scheme, Some(KeyScheme::SchnorrBip340));
    let output = output_key(btc, &[]);
    assert_eq!(sr.status.as_ref().unwrap().public_key.as_deref(), Some(hex::encode(output.serialize()).as_str()));
    independent::verify_bip340(&sighash, &output, &sig).unwrap();
    let payload = format!("a taproot payload {tag}");
    let spec = serde_json::json!({"payload": hex::encode(&payload), "derivationPath": "m/0/7"});
    let sr = sign(ns, &format!("btc-derived-{tag}"), "btc", spec).await;
    let hashed: [u8; 32] = Sha256::digest(&payload).into();
    independent::verify_bip340(&hashed, &output_key(btc, &[0, 7]), &signature(&sr).1).unwrap();
    assert!(independent::verify_bip340(&hashed, &output, &signature(&sr).1).is_err(), "signed by the derived key");

    // Ed25519: the message itself, checked with OpenSSL.
    let sol = key(keys, "sol").public_key.clone().unwrap();
    let message = format!("a Solana transaction message {tag}");
    let sr = sign(ns, &format!("sol-{tag}"), "sol", serde_json::json!({"payload": hex::encode(&message)})).await;
    let (scheme, sig) = signature(&sr);
    assert_eq!(scheme, Some(KeyScheme::EddsaEd25519));
    independent::verify_ed25519_openssl(message.as_bytes(), &sol, &sig).unwrap();
}

#[tokio::test]
async fn a_key_of_each_scheme_signs_over_quic_and_over_the_relay() {
    let mut ns = TestNamespace::new("schemes").await.unwrap();
    ns.start_kubelet().await.unwrap();
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    let schemes = serde_json::json!({"btc": "schnorr-bip340", "sol": "eddsa-ed25519"});

    // Refused at admission: a scheme for a key that is not listed.
    let stray = cluster("vault", "quic", &["default", "btc"], schemes.clone());
    let refused = clusters.create(&PostParams::default(), &stray).await.unwrap_err().to_string();
    assert!(refused.contains("every key in keySchemes must be listed in keys"), "{refused}");

    clusters
        .create(&PostParams::default(), &cluster("vault", "quic", &["default", "btc", "sol"], schemes))
        .await
        .unwrap();
    let keys = ready_keys(&ns).await;

    // Each key in its scheme's own form, checked here.
    let btc = key(&keys, "btc");
    assert_eq!(btc.scheme, Some(KeyScheme::SchnorrBip340));
    let compressed = btc.compressed_public_key.as_deref().unwrap();
    assert_eq!(btc.public_key.as_deref(), Some(&compressed[2..]), "x-only: the compressed key without its parity");
    let output = output_key(btc, &[]);
    assert_eq!(btc.taproot_output_key.as_deref(), Some(hex::encode(output.serialize()).as_str()));
    assert_eq!(btc.bitcoin_address.as_deref(), Some(independent::taproot_address(&output).as_str()));
    assert!(btc.ethereum_address.is_none());
    let sol = key(&keys, "sol");
    assert_eq!(sol.scheme, Some(KeyScheme::EddsaEd25519));
    let sol_key = hex::decode(sol.public_key.as_deref().unwrap()).unwrap();
    assert_eq!(sol.solana_address.as_deref(), Some(independent::base58(&sol_key).as_str()));
    assert!(sol.chain_code.is_none() && sol.ethereum_address.is_none());
    assert_eq!(key(&keys, "default").scheme, None);

    // A key's scheme is fixed: neither changed nor given to a key that exists.
    let params = PatchParams::default();
    for (patch, says) in [
        (serde_json::json!({"spec": {"keySchemes": {"btc": "eddsa-ed25519"}}}), "a key's scheme is immutable"),
        (
            serde_json::json!({"spec": {"keySchemes": {"default": "schnorr-bip340"}}}),
            "a key that exists already keeps the scheme",
        ),
        (serde_json::json!({"spec": {"keySchemes": null}}), "never removed or changed"),
        (serde_json::json!({"spec": {"keySchemes": {"btc": null}}}), "never removed or changed"),
    ] {
        let refused = clusters.patch("vault", &params, &Patch::Merge(&patch)).await.unwrap_err().to_string();
        assert!(refused.contains(says), "{refused}");
    }

    every_key_signs(&ns, &keys, "quic").await;

    // What Ed25519 does not sign ends Failed, with the reason.
    for (name, spec, says) in [
        ("sol-digest", serde_json::json!({"digest": "ab".repeat(32)}), "signs a message, not a digest"),
        ("sol-hash", serde_json::json!({"payload": "00", "hash": "sha256"}), "unset hash"),
        ("sol-path", serde_json::json!({"payload": "00", "derivationPath": "m/1"}), "unset derivationPath"),
    ] {
        let sr = sign(&ns, name, "sol", spec).await;
        let status = sr.status.unwrap();
        assert_eq!(status.phase, Some(SigningPhase::Failed), "{name}");
        assert!(status.reason.as_deref().unwrap_or_default().contains(says), "{name}: {:?}", status.reason);
        assert!(status.grant_id.is_none(), "{name}: no grant was issued");
    }

    roll_transport(&ns, "vault", "http", KEYGEN_WAIT).await;
    let relayed = |text: String| -> f64 {
        let samples = text.lines().filter(|l| l.starts_with("torcus_relay_messages_total"));
        samples.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    let before = relayed(ns.operator_metrics().await);
    every_key_signs(&ns, &keys, "relay").await;
    let after = relayed(ns.operator_metrics().await);
    assert!(after > before, "the sessions ran through the operator's relay: {before} -> {after} messages");
    ns.finish().await.unwrap();
}

/// A participant is frozen (SIGSTOP) before a FROST request, so the
/// session that includes it cannot finish, and then killed (SIGKILL) and
/// kept down, a dead machine, while that session waits on it: the operator
/// retries among the others, and the signature verifies. (Killed and
/// restarted at once, the node rejoins its session when the initiator
/// sends the proposal again, and the first attempt completes.)
#[tokio::test]
async fn a_participant_killed_during_a_frost_session_is_retried_around() {
    let mut ns = TestNamespace::new("frost-kill").await.unwrap();
    ns.start_kubelet().await.unwrap();
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    let schemes = serde_json::json!({"btc": "schnorr-bip340"});
    clusters.create(&PostParams::default(), &cluster("vault", "quic", &["btc"], schemes)).await.unwrap();
    let keys = ready_keys(&ns).await;
    let output = output_key(key(&keys, "btc"), &[]);
    let srs: Api<SigningRequest> = ns.api();

    let pid = ns.kubelet().pid(&ns.name, "vault-1-0").expect("node 1 runs");
    killpg(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGSTOP).unwrap();
    // The operator draws each signer set: until one holds node 1 (two sets
    // in three do), new requests complete without it.
    let mut caught = None;
    for i in 0..8u8 {
        let name = format!("frozen-{i}");
        let digest: [u8; 32] = Sha256::digest(name.as_bytes()).into();
        srs.create(&PostParams::default(), &request(&name, "btc", serde_json::json!({"digest": hex::encode(digest)})))
            .await
            .unwrap();
        let with_node_1 = eventually(&format!("{name} Completed, or Signing with node 1"), SIGN_WAIT, || async {
            let status = srs.get(&name).await?.status.unwrap_or_default();
            Ok(match status.phase {
                Some(SigningPhase::Signing) if status.participants.contains(&1) => Some(true),
                Some(SigningPhase::Completed) => Some(false),
                _ => None,
            })
        })
        .await
        .unwrap();
        if with_node_1 {
            caught = Some((name, digest));
            break;
        }
    }
    let (name, digest) = caught.expect("one of 8 signer sets holds node 1");
    // The fault state: node 1 is a participant of the running attempt, and
    // is killed in it (SIGKILL), and stays down.
    ns.kubelet().hold_down(&ns.name, "vault-1-0", true);
    eventually("node 1's process gone", Duration::from_secs(10), || async {
        Ok(nix::sys::signal::kill(Pid::from_raw(i32::try_from(pid)?), None).is_err().then_some(()))
    })
    .await
    .unwrap();
    let sr = wait_final(&ns, &name, SIGN_WAIT * 3).await;
    let status = sr.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(SigningPhase::Completed), "{:?}", status.reason);
    eprintln!("{name}: {} attempts; signed by {:?}; {:?}", status.attempts, status.participants, status.timings);
    assert!(status.attempts >= 2, "a second attempt: {}", status.attempts);
    assert!(!status.participants.contains(&1), "signed without the killed node: {:?}", status.participants);
    independent::verify_bip340(&digest, &output, &signature(&sr).1).unwrap();
    ns.finish().await.unwrap();
}

/// The schemes cluster `vault`'s node `index` runs, as its status shows them.
async fn node_schemes(ns: &TestNamespace, index: u16) -> Vec<String> {
    let clusters: Api<MpcCluster> = ns.api();
    let status = clusters.get("vault").await.unwrap().status.unwrap_or_default();
    status.nodes.iter().find(|n| n.index == index).map(|n| n.schemes.clone()).unwrap_or_default()
}

/// Has the nodes `old` play a build from before FROST (the test hook reads
/// the file at start-up) and restarts the nodes `restart`, then waits until
/// every node's status shows what it runs now.
async fn roll(ns: &TestNamespace, file: &std::path::Path, old: &[u16], restart: &[u16]) {
    let listed: Vec<String> = old.iter().map(u16::to_string).collect();
    std::fs::write(file, listed.join(" ")).unwrap();
    for index in restart {
        ns.kubelet().kill(&ns.name, &format!("vault-{index}-0")).unwrap();
    }
    for index in 0..3u16 {
        let want_frost = !old.contains(&index);
        eventually(&format!("node {index} to show whether it runs FROST"), SIGN_WAIT, || async {
            let schemes = node_schemes(ns, index).await;
            let frost = schemes.iter().any(|s| s.starts_with("schnorr-bip340 "));
            Ok((!schemes.is_empty() && frost == want_frost).then_some(()))
        })
        .await
        .unwrap();
    }
}

/// A rolling upgrade, played by a test hook that has chosen nodes run as a
/// build from before FROST (ECDSA only, as they advertise): a FROST key's
/// keygen waits for every node, with the reason; a FROST request goes only
/// to signer sets of nodes that run it; with too few such nodes it waits,
/// saying why, and signs once they are back.
#[tokio::test]
async fn during_a_rolling_upgrade_frost_sessions_go_only_to_nodes_that_run_frost() {
    let mut ns = TestNamespace::new("frost-upgrade").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old-builds");
    std::fs::write(&file, "1").unwrap();
    let env = vec![("TORCUS_TEST_OLD_BUILD_PARTIES".to_owned(), file.display().to_string())];
    ns.start_kubelet_with_env(torcus_e2e::kubelet::node_binary().unwrap(), env).await.unwrap();
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    let schemes = serde_json::json!({"btc": "schnorr-bip340"});
    clusters.create(&PostParams::default(), &cluster("vault", "quic", &["default", "btc"], schemes)).await.unwrap();

    // Node 1 runs an old build: the ECDSA key is generated, the BIP-340
    // key's keygen waits, and the cluster says for which node.
    let waiting = eventually("the BIP-340 keygen waiting for node 1", KEYGEN_WAIT, || async {
        let status = clusters.get("vault").await?.status.unwrap_or_default();
        let default_done = status.keys.iter().any(|k| k.name == "default" && k.public_key.is_some());
        let keys = status.conditions.iter().find(|c| c.type_ == "KeysReady").cloned();
        Ok(keys.filter(|c| default_done && c.status == "False" && c.reason == "WaitingForCapableNodes"))
    })
    .await
    .unwrap();
    assert!(waiting.message.contains("key btc (schnorr-bip340) waits for nodes [1]"), "{}", waiting.message);
    assert_eq!(node_schemes(&ns, 1).await, ["ecdsa-secp256k1"], "an old build registers without capabilities");
    let schemes_0 = node_schemes(&ns, 0).await;
    assert!(schemes_0.iter().any(|s| s.starts_with("eddsa-ed25519 frost-givre/")), "{schemes_0:?}");
    assert!(!key_exists(&clusters, "btc").await);

    // Node 1 upgraded: the key is generated.
    roll(&ns, &file, &[], &[1]).await;
    let keys = ready_keys(&ns).await;
    let output = output_key(key(&keys, "btc"), &[]);
    // Each node's heartbeat lists the shares it holds; status shows them.
    let nodes = eventually("every node listing its shares", SIGN_WAIT, || async {
        let nodes = clusters.get("vault").await?.status.unwrap_or_default().nodes;
        Ok(nodes.iter().all(|n| n.keys == ["btc", "default"]).then_some(nodes))
    })
    .await
    .unwrap();
    assert!(nodes.iter().all(|n| n.transports == ["quic"] && n.version.is_some()), "{nodes:?}");

    // Node 1 is back on the old build (a rollback, or the upgrade's next
    // round): BIP-340 requests are signed by nodes 0 and 2 only.
    roll(&ns, &file, &[1], &[1]).await;
    let srs: Api<SigningRequest> = ns.api();
    for i in 0..4u8 {
        let digest: [u8; 32] = Sha256::digest([i]).into();
        let sr = sign(&ns, &format!("mixed-{i}"), "btc", serde_json::json!({"digest": hex::encode(digest)})).await;
        independent::verify_bip340(&digest, &output, &signature(&sr).1).unwrap();
        let status = sr.status.unwrap();
        assert_eq!(status.participants, [0, 2], "mixed-{i}: only nodes that run BIP-340");
        assert_eq!(status.attempts, 1, "mixed-{i}: no attempt went to the old node");
    }

    // Nodes 1 and 2 on the old build: too few nodes run BIP-340, and the
    // request says so instead of starting a session; once they are
    // upgraded, it is signed.
    roll(&ns, &file, &[1, 2], &[2]).await;
    let digest: [u8; 32] = Sha256::digest(b"waits").into();
    srs.create(&PostParams::default(), &request("waits", "btc", serde_json::json!({"digest": hex::encode(digest)})))
        .await
        .unwrap();
    // Approved by the policy, then waiting: its reason says for what.
    let why = eventually("the request to wait for capable nodes", SIGN_WAIT, || async {
        let status = srs.get("waits").await?.status.unwrap_or_default();
        Ok(status.reason.filter(|_| status.phase == Some(SigningPhase::Approved)))
    })
    .await
    .unwrap();
    assert!(
        why.contains("1 of 3 healthy nodes run schnorr-bip340; 2 needed: nodes [1, 2] run a build without it"),
        "{why}"
    );
    assert!(srs.get("waits").await.unwrap().status.unwrap().grant_id.is_none(), "no grant was issued");
    roll(&ns, &file, &[], &[1, 2]).await;
    let sr = wait_final(&ns, "waits", SIGN_WAIT).await;
    independent::verify_bip340(&digest, &output, &signature(&sr).1).unwrap();
    ns.finish().await.unwrap();
}

async fn key_exists(clusters: &Api<MpcCluster>, name: &str) -> bool {
    let status = clusters.get("vault").await.unwrap().status.unwrap_or_default();
    status.keys.iter().any(|k| k.name == name && k.public_key.is_some())
}
