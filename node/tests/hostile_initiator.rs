//! A hostile initiator against real node processes: with a valid grant for
//! a raw digest, it offers the participant a presignature the participant
//! holds (the forgery of eprint 2021/1330 §1.1.2 needs exactly that: a
//! presignature over a digest of the attacker's choosing). The participant
//! acks without taking it, and keeps it in its pool; offered for a payload
//! grant instead, the same presignature is taken, which shows the test sees
//! what it looks for.
//!
//! The test plays party 0 itself over the relay (node 0 is stopped first, so
//! that its queue is the test's): it seals with party 0's seal key, as the
//! real node would, and the participant answers to party 0.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use torcus_contract::api::SessionStatus;
use torcus_contract::{Control, GrantKind, SignMessage, SignedGrant};
use torcus_node::engine::{Channel, Envelope};
use torcus_node::testing::{Cluster, digest, payload, sample};
use torcus_node::transport::relay::{RelayConfig, RelayTransport, RequestSigner};
use torcus_node::transport::seal::{self, SealedTransport, Sealer};
use torcus_node::transport::{Transport, TransportMetrics};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_torcus-node"))
}

/// Party 0, played by the test: sends sealed control messages through the
/// relay and receives what is sent to party 0.
struct Impostor {
    transport: SealedTransport<RelayTransport>,
    incoming: mpsc::Receiver<Envelope>,
    _stop: tokio_util::sync::DropGuard,
}

impl Impostor {
    fn new(cluster: &Cluster) -> Self {
        let config = &cluster.config;
        let stop = CancellationToken::new();
        let registry = prometheus::Registry::new();
        let metrics = TransportMetrics::register(&registry, "relay").unwrap();
        let dropped = metrics.dropped.clone();
        let (sealed_tx, sealed_rx) = mpsc::channel(64);
        let (tx, incoming) = mpsc::channel(64);
        let relay = RelayTransport::start(
            RelayConfig {
                me: 0,
                cluster: format!("{}/{}", config.namespace, config.cluster),
                base_url: config.registry_url.clone().expect("http mode has a relay"),
                // The harness's relay takes requests signed by the node they speak for.
                signer: Some(Arc::new(RequestSigner::from_tls_dir(cluster.tls_dir(0)))),
            },
            sealed_tx,
            metrics,
            stop.clone(),
        );
        // The harness's seal seed of party 0.
        let sealer = Arc::new(Sealer::from_config(0, config, zeroize::Zeroizing::new([200; 32])).unwrap());
        seal::spawn_opener(Arc::clone(&sealer), sealed_rx, dropped, tx);
        Self { transport: SealedTransport::new(relay, sealer), incoming, _stop: stop.drop_guard() }
    }

    async fn send(&self, to: u16, session: [u8; 32], control: &Control) {
        let payload = serde_json::to_vec(control).unwrap();
        let env = Envelope { session, channel: Channel::Control, from: 0, to: Some(to), seq: 0, payload };
        self.transport.send(to, env).await.unwrap();
    }

    /// The next control message of `session` sent to party 0 within `wait`.
    async fn try_receive(&mut self, session: [u8; 32], wait: Duration) -> Option<(u16, Control)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let env = tokio::time::timeout_at(deadline, self.incoming.recv()).await.ok()?.expect("the relay runs");
            if env.channel == Channel::Control && env.session == session {
                return Some((env.from, serde_json::from_slice(&env.payload).unwrap()));
            }
        }
    }

    /// The next control message of `session` sent to party 0.
    async fn receive(&mut self, session: [u8; 32]) -> (u16, Control) {
        loop {
            let env = tokio::time::timeout(Duration::from_secs(20), self.incoming.recv())
                .await
                .expect("an answer within 20 s")
                .expect("the relay runs");
            if env.channel == Channel::Control && env.session == session {
                return (env.from, serde_json::from_slice(&env.payload).unwrap());
            }
        }
    }
}

/// A grant for `message` among parties 0 and 2 whose initiator is party 0.
fn grant_initiated_by_0(cluster: &Cluster, message: SignMessage) -> SignedGrant {
    loop {
        let kind = GrantKind::Sign { key: "default".into(), message: message.clone(), derivation_path: vec![] };
        let grant = cluster.grant(kind, vec![0, 2]);
        if grant.grant.initiator() == 0 {
            return grant;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_never_spends_a_presignature_on_a_raw_digest() {
    let mut cluster = Cluster::with_presignatures(binary(), 3, 2, "http", 2).await;
    cluster.wait_ready().await;
    cluster.keygen("default").await;
    let held = loop {
        let ids = cluster.pool(2, "default", &[0, 2]).await.map(|p| p.ids).unwrap_or_default();
        if ids.len() == 2 {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    cluster.kill(0);
    let mut impostor = Impostor::new(&cluster);
    let offered: [u8; 32] = hex::decode(&held[0]).unwrap().try_into().unwrap();

    // A raw digest with a presignature on offer: acked without it.
    let grant = grant_initiated_by_0(&cluster, digest([0x66; 32]));
    let session = grant.grant.session_id();
    impostor.send(2, session, &Control::Proposal { grant, presignature: Some(offered) }).await;
    let (from, ack) = impostor.receive(session).await;
    assert_eq!(from, 2);
    assert!(matches!(ack, Control::Ack { presignature: None, .. }), "{ack:?}");
    let pool = cluster.pool(2, "default", &[0, 2]).await.expect("pool");
    assert_eq!(pool.ids, held, "the presignature stays in the pool");
    let abort = Control::Abort { session_id: session, from: 0, reason: "test over".into(), accused: None };
    impostor.send(2, session, &abort).await;

    // The same offer for a payload: taken, as the protocol wants.
    let grant = grant_initiated_by_0(&cluster, payload(b"an honest payment"));
    let session = grant.grant.session_id();
    impostor.send(2, session, &Control::Proposal { grant, presignature: Some(offered) }).await;
    let (_, ack) = impostor.receive(session).await;
    assert!(matches!(ack, Control::Ack { presignature: Some(id), .. } if id == offered), "{ack:?}");
    let pool = cluster.pool(2, "default", &[0, 2]).await.expect("pool");
    assert!(!pool.ids.contains(&held[0]), "taken for the payload: {pool:?}");
    impostor
        .send(2, session, &Control::Abort { session_id: session, from: 0, reason: "test over".into(), accused: None })
        .await;

    // A proposal of someone else's grant (among 1 and 2, initiated by 1),
    // seen in transit: refused before the grant is even checked, so it
    // does not spend the session the real initiator then proposes.
    let grant = loop {
        let kind = GrantKind::Sign { key: "default".into(), message: payload(b"not yours"), derivation_path: vec![] };
        let grant = cluster.grant(kind, vec![1, 2]);
        if grant.grant.initiator() == 1 {
            break grant;
        }
    };
    let session = grant.grant.session_id();
    impostor.send(2, session, &Control::Proposal { grant: grant.clone(), presignature: None }).await;
    let (_, refused) = impostor.receive(session).await;
    assert!(
        matches!(&refused, Control::Abort { reason, .. } if reason.contains("proposal came from party 0")),
        "{refused:?}"
    );
    let (code, body) = cluster.post(1, torcus_contract::api::SIGN_PATH, &grant).await;
    assert_eq!(code, 200, "the initiator's own proposal still runs: {body}");
    torcus_node::testing::verify(&body, &sha2::Sha256::digest(b"not yours").into());
}

/// The initiator sends its proposal again to a participant that has not
/// acked (a proposal can be lost with its connection). A repeat is
/// answered with the same ack and never starts a second session; once the
/// session has ended, a repeat gets no answer at all (it is not refused as
/// a replay either, which would abort a session still running elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_proposal_is_acked_again_and_never_runs_twice() {
    let mut cluster = Cluster::new(binary(), 3, 2, "http").await;
    cluster.wait_ready().await;
    cluster.keygen("default").await;
    cluster.kill(0);
    let mut impostor = Impostor::new(&cluster);
    let grant = grant_initiated_by_0(&cluster, payload(b"proposed twice"));
    let session = grant.grant.session_id();
    let proposal = Control::Proposal { grant, presignature: None };

    impostor.send(2, session, &proposal).await;
    let (from, ack) = impostor.receive(session).await;
    assert_eq!(from, 2);
    assert!(matches!(ack, Control::Ack { .. }), "{ack:?}");
    impostor.send(2, session, &proposal).await;
    let (from, again) = impostor.receive(session).await;
    assert_eq!((from, &again), (2, &ack), "the same ack again");
    let metrics = cluster.metrics(2).await;
    assert_eq!(sample(&metrics, r#"torcus_node_proposals_repeated_total{event="acked_again"}"#), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, r#"torcus_node_grants_rejected_total{reason="replayed"}"#), 0.0, "{metrics}");
    assert_eq!(cluster.session_status(2, &session).await, Some(SessionStatus::Proposed));

    // The session ends (the initiator gives up), and is not run again.
    let abort = Control::Abort { session_id: session, from: 0, reason: "test over".into(), accused: None };
    impostor.send(2, session, &abort).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !matches!(cluster.session_status(2, &session).await, Some(SessionStatus::Failed { .. })) {
        assert!(tokio::time::Instant::now() < deadline, "the session did not end on party 2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    impostor.send(2, session, &proposal).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sample(&cluster.metrics(2).await, r#"torcus_node_proposals_repeated_total{event="ignored"}"#) < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the late repeat was not seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(impostor.try_receive(session, Duration::from_secs(2)).await.is_none(), "no answer to a late repeat");
    let metrics = cluster.metrics(2).await;
    assert_eq!(sample(&metrics, r#"torcus_node_grants_rejected_total{reason="replayed"}"#), 0.0, "{metrics}");
    assert_eq!(sample(&metrics, r#"torcus_node_sessions_total{kind="sign",outcome="completed"}"#), 0.0, "{metrics}");
    assert!(matches!(cluster.session_status(2, &session).await, Some(SessionStatus::Failed { .. })));
}

/// A proposal whose grant names no participants (signed by the real
/// grant key, so only its shape is wrong) is refused with the reason, and
/// the node's control messages keep flowing: a session among the real
/// nodes right after it signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_naming_no_participants_is_refused_and_the_node_goes_on() {
    let mut cluster = Cluster::new(binary(), 3, 2, "http").await;
    cluster.wait_ready().await;
    cluster.keygen("default").await;
    cluster.kill(0);
    let mut impostor = Impostor::new(&cluster);
    let kind = GrantKind::Sign { key: "default".into(), message: payload(b"nobody"), derivation_path: vec![] };
    let grant = cluster.grant(kind, Vec::new());
    let session = grant.grant.session_id();
    impostor.send(2, session, &Control::Proposal { grant, presignature: None }).await;
    let (from, refused) = impostor.receive(session).await;
    assert_eq!(from, 2);
    assert!(matches!(&refused, Control::Abort { reason, .. } if reason.contains("no participants")), "{refused:?}");
    let metrics = cluster.metrics(2).await;
    assert_eq!(sample(&metrics, r#"torcus_node_grants_rejected_total{reason="malformed"}"#), 1.0, "{metrics}");
    assert!(!cluster.log(2).contains("panicked"), "{}", cluster.log(2));
    // Parties 1 and 2 still run a session (its control messages go
    // through the same loop on party 2).
    let body = cluster.sign("default", vec![1, 2], payload(b"still here"), vec![]).await;
    assert_eq!(body["presigned"], false, "{body}");
}
