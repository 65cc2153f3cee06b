//! What the transport tests share, run against each transport that
//! connects peers directly (QUIC, TCP): in-order delivery under load, and
//! the stalled-peer check.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use torcus_node::engine::Envelope;
use torcus_node::transport::{SEND_TIMEOUT, Transport, TransportMetrics};

/// Party 0 (`sender`, with its `metrics`) sends messages of `size` bytes to
/// party 1, which has stopped reading, until a send fails; meanwhile and
/// after, a message to party 2 arrives on `healthy`. Asserts that the
/// failing send took `SEND_TIMEOUT` (not for ever), named party 1 and was
/// counted as `send_timeout`, and that party 2 was never held up.
pub async fn sends_to_a_stalled_peer_fail_within_the_deadline<T: Transport>(
    sender: Arc<T>,
    metrics: &TransportMetrics,
    healthy: &mut mpsc::Receiver<Envelope>,
    size: usize,
) {
    let big = move |seq: u64, to: u16| Envelope {
        session: [9; 32],
        from: 0,
        to: Some(to),
        seq,
        payload: vec![seq as u8; size],
        ..Envelope::default()
    };
    // At most 400 messages: far past any window or buffer; the loop ends.
    let transport = Arc::clone(&sender);
    let stalling = tokio::spawn(async move {
        for seq in 0..400 {
            let started = Instant::now();
            match tokio::time::timeout(SEND_TIMEOUT * 3, transport.send(1, big(seq, 1))).await {
                Err(_) => panic!("send {seq} to the stalled peer waited past its deadline"),
                Ok(Err(error)) => return Some((seq, error, started.elapsed())),
                Ok(Ok(())) => {}
            }
        }
        None
    });
    // Meanwhile, with a send to the stalled peer stuck: a first connection
    // to another peer, and a message over it, are not held up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!stalling.is_finished(), "the stalled peer's window is full by now");
    let started = Instant::now();
    sender.send(2, big(1000, 2)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), healthy.recv()).await.unwrap().unwrap();
    assert_eq!(got.seq, 1000);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    let (seq, error, took) = stalling.await.unwrap().expect("the stalled peer's window filled");
    assert!(seq > 0, "the first messages went through");
    assert!(took >= SEND_TIMEOUT && took < SEND_TIMEOUT + Duration::from_secs(5), "{took:?}");
    let text = error.to_string();
    assert!(text.contains("party 1") && text.contains("did not take a message"), "{text}");
    assert_eq!(metrics.connection_failures.with_label_values(&["send_timeout"]).get(), 1);
    // And after it.
    sender.send(2, big(1001, 2)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), healthy.recv()).await.unwrap().unwrap();
    assert_eq!(got.seq, 1001);
}

/// Every party of `parties` (its transport, its incoming channel and its
/// metrics) sends `per_pair` numbered messages to each other party at once;
/// asserts that each arrives exactly once, in order per sender, with its
/// payload, that nothing else arrives, and that the counters say so.
pub async fn every_message_arrives_once_and_in_order<T: Transport + 'static>(
    parties: Vec<(Arc<T>, &mut mpsc::Receiver<Envelope>, &TransportMetrics)>,
    per_pair: u64,
) {
    let n = parties.len() as u16;
    let env = |from: u16, to: u16, seq: u64| Envelope {
        session: [9; 32],
        from,
        to: Some(to),
        seq,
        payload: seq.to_be_bytes().to_vec(),
        ..Envelope::default()
    };
    let senders: Vec<_> = parties
        .iter()
        .enumerate()
        .map(|(i, (transport, _, _))| {
            let transport = Arc::clone(transport);
            tokio::spawn(async move {
                for seq in 0..per_pair {
                    for to in (0..n).filter(|t| usize::from(*t) != i) {
                        transport.send(to, env(i as u16, to, seq)).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let expected_total = u64::from(n - 1) * per_pair;
    for (i, (_, incoming, metrics)) in parties.into_iter().enumerate() {
        let mut next: HashMap<u16, u64> = HashMap::new();
        for _ in 0..expected_total {
            let e = tokio::time::timeout(Duration::from_secs(20), incoming.recv()).await.unwrap().unwrap();
            assert_eq!(e.to, Some(i as u16));
            let expected = next.entry(e.from).or_default();
            assert_eq!(e.seq, *expected, "from {} to {i}: lost, duplicated or reordered", e.from);
            assert_eq!(e.payload, e.seq.to_be_bytes());
            *expected += 1;
        }
        assert!(next.values().all(|n| *n == per_pair));
        assert!(incoming.try_recv().is_err(), "nothing extra");
        assert_eq!(metrics.received.get(), expected_total);
        assert_eq!(metrics.sent.get(), expected_total);
    }
}
