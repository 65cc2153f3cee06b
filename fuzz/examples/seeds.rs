//! Writes the seed corpora (`fuzz/corpus/<target>/`): one well-formed
//! input of every kind each target decodes, so the fuzzer starts inside the
//! formats rather than at their first byte. Run from `fuzz/` after a change
//! of a format: `cargo run --example seeds`.

use std::path::Path;

use ed25519_dalek::SigningKey;
use torcus_contract::envelope::{Channel, Envelope, encode};
use torcus_contract::registry::{Capabilities, Heartbeat, HeldKey, Registration, SchemeSupport};
use torcus_contract::{
    ClusterConfig, Control, Grant, GrantKind, HashAlgorithm, RegistryMessage, Scheme, SignMessage, SignedMessage,
};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus folder");
    std::fs::write(dir.join(name), bytes).expect("seed written");
}

fn grant(kind: GrantKind) -> Grant {
    Grant {
        version: torcus_contract::GRANT_VERSION,
        grant_id: [2; 16],
        namespace: "signing".into(),
        cluster: "vault".into(),
        kind,
        participants: vec![0, 1],
        nonce: [3; 16],
        issued_at: 1_800_000_000,
        expires_at: 1_800_000_300,
    }
}

fn main() {
    for (name, channel, to) in [
        ("protocol", Channel::Protocol, Some(1)),
        ("control", Channel::Control, None),
        ("hello", Channel::Hello, Some(2)),
    ] {
        let env = Envelope { session: [7; 32], channel, from: 0, to, seq: 3, payload: b"{\"x\":1}".to_vec() };
        write("envelope", name, &encode(&env));
    }

    // Signed by the key the grant target trusts (seed [1; 32]).
    let issuer = SigningKey::from_bytes(&torcus_contract::fuzz_checks::GRANT_ISSUER_SEED);
    let sign = |kind| torcus_contract::sign(grant(kind), &issuer);
    let digest = sign(GrantKind::Sign {
        key: "default".into(),
        message: SignMessage::Digest { digest: [9; 32] },
        derivation_path: vec![44, 60, 0],
    });
    let payload = sign(GrantKind::Sign {
        key: "default".into(),
        message: SignMessage::payload(HashAlgorithm::Keccak256, b"hello torcus".to_vec()),
        derivation_path: vec![],
    });
    let keygen = sign(GrantKind::Keygen { key: "default".into(), aux_info: Some("ab".repeat(32)), supersedes: vec![] });
    let frost_keygen =
        sign(GrantKind::FrostKeygen { key: "sol".into(), scheme: Scheme::EddsaEd25519, supersedes: vec![] });
    let frost_sign = sign(GrantKind::FrostSign {
        key: "sol".into(),
        scheme: Scheme::EddsaEd25519,
        message: SignMessage::Raw { message: b"a Solana message".to_vec() },
        derivation_path: vec![],
    });
    for (name, signed) in [
        ("sign-digest", &digest),
        ("sign-payload", &payload),
        ("keygen", &keygen),
        ("frost-keygen", &frost_keygen),
        ("frost-sign", &frost_sign),
    ] {
        write("grant", name, &serde_json::to_vec(signed).expect("json"));
    }

    let controls = [
        ("proposal", Control::Proposal { grant: digest.clone(), presignature: Some([4; 32]) }),
        ("ack", Control::Ack { session_id: [5; 32], from: 1, presignature: Some([4; 32]) }),
        ("start", Control::Start { session_id: [5; 32], presignature: None }),
        (
            "presign-proposal",
            Control::PresignProposal {
                session_id: [6; 32],
                key: "default".into(),
                path: vec![44, 60],
                participants: vec![0, 1],
                held: vec![[8; 32]],
            },
        ),
        ("abort", Control::Abort { session_id: [5; 32], from: 2, reason: "no ack".into(), accused: Some(1) }),
    ];
    for (name, control) in controls {
        write("control", name, &serde_json::to_vec(&control).expect("json"));
    }

    let register = RegistryMessage::Register(Registration {
        namespace: "signing".into(),
        cluster: "vault".into(),
        party: 1,
        address: "10.0.0.7".into(),
        http_port: 8443,
        p2p_port: 7000,
        version: "0.1.0".into(),
        started_at: 1_800_000_000_000,
        sent_at: 1_800_000_000_500,
        capabilities: Some(Capabilities {
            schemes: vec![SchemeSupport { scheme: "schnorr-bip340".into(), protocol: "frost-givre/0.2.0".into() }],
            grant_version: 3,
            transports: vec!["quic".into()],
        }),
    });
    let heartbeat = RegistryMessage::Heartbeat(Heartbeat {
        namespace: "signing".into(),
        cluster: "vault".into(),
        party: 1,
        sent_at: 1_800_000_001_000,
        sessions_ok: 4,
        sessions_failed: 1,
        uptime_secs: 60,
        keys: vec![HeldKey { name: "btc".into(), scheme: "schnorr-bip340".into() }],
    });
    for (name, message) in [("register", register), ("heartbeat", heartbeat)] {
        let signed = SignedMessage {
            payload: serde_json::to_string(&message).expect("json"),
            certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            signature: "30440220".into(),
        };
        write("registry_message", name, &serde_json::to_vec(&signed).expect("json"));
    }

    let config = ClusterConfig::sample("vault", "signing", 3, 2);
    write("cluster_config", "sample", &serde_json::to_vec(&config).expect("json"));

    // The node's decoders: frames on a stream, TCP frames, sealed envelopes.
    use torcus_node::fuzz_checks::{IDENTITY_SEEDS, TCP_NOW_MS, seal_as_party_0, sealed_original};
    use torcus_node::transport::tcp::sign_frame;
    let original = sealed_original();
    let mut stream = Vec::new();
    for env in [original.clone(), Envelope { channel: Channel::Hello, payload: vec![], ..original.clone() }] {
        let body = encode(&env);
        stream.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
        stream.extend_from_slice(&body);
    }
    write("stream_frames", "two-frames", &stream);
    let key = SigningKey::from_bytes(&IDENTITY_SEEDS[0]);
    let message = sign_frame(&key, 0, 1, TCP_NOW_MS, 7, &encode(&original));
    write("tcp_frame", "message", &message[4..]);
    let hello = sign_frame(&key, 0, 1, TCP_NOW_MS - 1_000, 8, &[]);
    write("tcp_frame", "hello", &hello[4..]);
    assert!(torcus_node::fuzz_checks::tcp_frame_accepted(&message[4..]), "the seed frame is accepted");
    let sealed = encode(&seal_as_party_0(original));
    assert!(torcus_node::fuzz_checks::sealed_envelope_opened(&sealed), "the seed envelope opens");
    write("sealed_envelope", "sealed", &sealed);
}
