//! Connects sessions to a transport: incoming envelopes go to the session
//! they name, outgoing ones to the transport (a broadcast to every other
//! party of the session).
//!
//! A peer may start a session a moment before this node does, so envelopes
//! for a session not open yet wait in a small buffer. The buffer is bounded
//! per session and in number of sessions, so a peer cannot fill memory by
//! inventing session ids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::engine::{Channel, Envelope, SessionFaults, SessionNet};
use crate::transport::Transport;

/// Envelopes kept for one session that is not open yet.
const MAX_WAITING_PER_SESSION: usize = 1024;
/// Sessions that may have envelopes waiting at once.
const MAX_WAITING_SESSIONS: usize = 64;
/// How long envelopes wait for their session to open.
const WAITING_TTL: Duration = Duration::from_secs(60);
/// Channel depth between router and session.
const SESSION_QUEUE: usize = 4096;

/// Routes envelopes between a transport and the sessions of this node.
#[derive(Debug, Default)]
pub struct Router {
    slots: Mutex<HashMap<[u8; 32], Slot>>,
    /// Per session, the first party a send to failed, and why, until the
    /// session's owner takes it ([`Router::take_failure`]).
    failures: Mutex<HashMap<[u8; 32], (u16, String)>>,
    /// Per open session, whom it holds responsible ([`Router::take_accusation`]).
    faults: Mutex<HashMap<[u8; 32], SessionFaults>>,
}

/// Most send failures kept for sessions whose owner has not taken them.
const MAX_FAILURES: usize = 1024;

#[derive(Debug)]
enum Slot {
    Waiting { envelopes: Vec<Envelope>, since: Instant },
    Open(mpsc::Sender<Envelope>),
}

impl Router {
    /// An empty router.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Opens `session` and returns its incoming channel, with whatever
    /// arrived for it before.
    pub fn open(&self, session: [u8; 32]) -> mpsc::Receiver<Envelope> {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(Slot::Waiting { envelopes, .. }) = slots.remove(&session) {
            for env in envelopes {
                // The channel is new and deeper than the waiting buffer.
                let _ = tx.try_send(env);
            }
        }
        slots.insert(session, Slot::Open(tx));
        rx
    }

    /// Forgets `session`; later envelopes for it are dropped after the TTL.
    pub fn close(&self, session: &[u8; 32]) {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).remove(session);
        self.faults.lock().unwrap_or_else(PoisonError::into_inner).remove(session);
    }

    /// Hands an envelope to its session, or keeps it until the session
    /// opens. Returns false when it had to be dropped.
    pub async fn deliver(&self, env: Envelope) -> bool {
        let sender = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            slots.retain(|_, slot| !matches!(slot, Slot::Waiting { since, .. } if now - *since > WAITING_TTL));
            let waiting = slots.values().filter(|s| matches!(s, Slot::Waiting { .. })).count();
            match slots.get_mut(&env.session) {
                Some(Slot::Open(tx)) => tx.clone(),
                Some(Slot::Waiting { envelopes, .. }) => {
                    if envelopes.len() >= MAX_WAITING_PER_SESSION {
                        return false;
                    }
                    envelopes.push(env);
                    return true;
                }
                None if waiting < MAX_WAITING_SESSIONS => {
                    slots.insert(env.session, Slot::Waiting { envelopes: vec![env], since: now });
                    return true;
                }
                None => return false,
            }
        };
        sender.send(env).await.is_ok()
    }

    /// Feeds every envelope from a transport's incoming channel to its
    /// session; control envelopes go to `control` when given, else are dropped.
    pub fn spawn_inbound(
        self: &Arc<Self>,
        mut incoming: mpsc::Receiver<Envelope>,
        control: Option<mpsc::Sender<Envelope>>,
    ) -> tokio::task::JoinHandle<()> {
        let router = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(env) = incoming.recv().await {
                if env.channel == Channel::Control {
                    if let Some(control) = &control {
                        let _ = control.send(env).await;
                    }
                    continue;
                }
                if !router.deliver(env).await {
                    tracing::debug!("dropped an envelope for an unknown or full session");
                }
            }
        })
    }

    /// The participant `session` holds responsible for breaking it (a
    /// message that does not decode or repeats a round, or silence), and
    /// why; taken once.
    pub fn take_accusation(&self, session: &[u8; 32]) -> Option<crate::engine::Accusation> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner).remove(session)?.accused()
    }

    /// The first party a send of `session` failed to, and why; taken once.
    pub fn take_failure(&self, session: &[u8; 32]) -> Option<(u16, String)> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(session)
    }

    /// A send of `session` to `party` failed: every message of a session is
    /// needed, so the session cannot finish. Its incoming queue is closed,
    /// which ends its protocol now instead of at its idle timeout, and the
    /// failure is kept for [`Router::take_failure`].
    fn fail(&self, session: [u8; 32], party: u16, reason: String) {
        {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            if failures.len() >= MAX_FAILURES {
                failures.clear();
            }
            failures.entry(session).or_insert((party, reason));
        }
        self.close(&session);
    }

    /// A [`SessionNet`] for `session` among `parties`, whose outgoing
    /// envelopes go out through `transport`. Each send has its deadline
    /// (`transport::SEND_TIMEOUT`); once one failed, the session is over
    /// ([`Router::fail`]) and nothing more of it is sent.
    pub fn session<T: Transport>(
        self: &Arc<Self>,
        transport: Arc<T>,
        session: [u8; 32],
        me: u16,
        parties: Vec<u16>,
    ) -> SessionNet {
        let incoming = self.open(session);
        let (outgoing, mut out_rx) = mpsc::channel::<Envelope>(SESSION_QUEUE);
        let others: Vec<u16> = parties.iter().copied().filter(|p| *p != me).collect();
        let router = Arc::clone(self);
        tokio::spawn(async move {
            let mut failed = false;
            while let Some(env) = out_rx.recv().await {
                if failed {
                    continue;
                }
                let targets = match env.to {
                    Some(to) => vec![to],
                    None => others.clone(),
                };
                for to in targets {
                    if let Err(error) = transport.send(to, env.clone()).await {
                        tracing::warn!(to, %error, "could not send a protocol message; the session cannot finish");
                        router.fail(session, to, error.to_string());
                        failed = true;
                        break;
                    }
                }
            }
        });
        let faults = SessionFaults::default();
        // One per open session: `close` (or the owner's take) removes it.
        self.faults.lock().unwrap_or_else(PoisonError::into_inner).insert(session, faults.clone());
        SessionNet { session, me, parties, incoming, outgoing, idle_timeout: None, faults }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(session: u8, seq: u64) -> Envelope {
        Envelope { session: [session; 32], from: 1, to: Some(0), seq, ..Envelope::default() }
    }

    /// Fails every send to party 2.
    struct NoTwo;

    impl Transport for NoTwo {
        async fn send(&self, to: u16, _: Envelope) -> Result<(), crate::transport::SendError> {
            match to {
                2 => Err(crate::transport::SendError::Connection { party: 2, reason: "stalled".into() }),
                _ => Ok(()),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_send_ends_the_session_at_once_and_names_the_peer() {
        let router = Router::new();
        let mut net = router.session(Arc::new(NoTwo), [4; 32], 0, vec![0, 1, 2]);
        assert!(router.deliver(Envelope { session: [4; 32], from: 1, ..Envelope::default() }).await);
        net.outgoing.send(Envelope { session: [4; 32], from: 0, to: None, ..Envelope::default() }).await.unwrap();
        // What had arrived is still read; then the queue ends, long before
        // any idle timeout.
        assert!(net.incoming.recv().await.is_some());
        let ended = tokio::time::timeout(Duration::from_secs(5), net.incoming.recv()).await;
        assert!(matches!(ended, Ok(None)), "the session's queue is closed");
        let (party, reason) = router.take_failure(&[4; 32]).expect("the failure is kept");
        assert_eq!(party, 2);
        assert!(reason.contains("stalled"), "{reason}");
        assert_eq!(router.take_failure(&[4; 32]), None, "taken once");
    }

    #[tokio::test]
    async fn early_envelopes_wait_for_their_session() {
        let router = Router::new();
        assert!(router.deliver(env(1, 1)).await);
        assert!(router.deliver(env(1, 2)).await);
        let mut rx = router.open([1; 32]);
        assert!(router.deliver(env(1, 3)).await);
        for seq in 1..=3 {
            assert_eq!(rx.recv().await.unwrap().seq, seq, "in order, early ones first");
        }
    }

    #[tokio::test]
    async fn waiting_is_bounded() {
        let router = Router::new();
        for seq in 0..MAX_WAITING_PER_SESSION as u64 {
            assert!(router.deliver(env(1, seq)).await);
        }
        assert!(!router.deliver(env(1, 9999)).await, "per-session cap");
        for s in 2..(MAX_WAITING_SESSIONS as u8 + 1) {
            assert!(router.deliver(env(s, 0)).await);
        }
        assert!(!router.deliver(env(250, 0)).await, "session cap");
    }
}
