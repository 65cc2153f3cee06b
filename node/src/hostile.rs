//! TEST ONLY (`test-hooks` builds): a party that misbehaves inside the
//! protocol. A node made hostile runs its signing sessions honestly inside
//! (the library computes every message as usual) but tampers with what it
//! sends, the way a compromised node could: garbage, silence, a message sent
//! twice, messages out of order, an earlier round's message in place of the
//! current one, or its valid messages of an earlier session. The tests check
//! that the honest parties end each such session within its deadline with
//! an Abort naming the hostile node, never with a bad signature, and sign
//! without it afterwards.
//!
//! Only envelopes change here; authentication stays intact (the node signs
//! and seals what it sends with its own keys), as it would for an insider.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::engine::{Envelope, SessionNet};

/// How a hostile node tampers with its protocol messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Misbehaviour {
    /// Every message is replaced by bytes that do not decode.
    Garbage,
    /// Nothing is sent once the protocol runs (the handshake completes).
    Silent,
    /// Every message is sent twice.
    Duplicate,
    /// Each message is held back until the next one is sent (at most 200 ms),
    /// which then goes first. Not a violation: the protocol takes messages
    /// of a later round early, and the session completes.
    Reorder,
    /// From its second message to each recipient on, the first one to that
    /// recipient is sent again (an earlier round's message, in place of the
    /// current round's).
    WrongRound,
    /// The k-th message to each recipient is the k-th message this node
    /// sent that recipient in its previous signing session: valid messages
    /// of another session, under this session's id.
    Replay,
}

/// What a node sent in one session: recipient (`None`: everyone) and payload.
type Sent = Vec<(Option<u16>, Vec<u8>)>;

/// Sessions remembered for [`Misbehaviour::Replay`].
const REMEMBERED: usize = 4;

/// How long [`Misbehaviour::Reorder`] holds a message back.
const HOLD: Duration = Duration::from_millis(200);

/// A hostile node's tampering, shared by its sessions.
#[derive(Debug)]
pub struct Hostile {
    mode: Misbehaviour,
    /// What this node's last sessions really sent, newest last.
    sent: Mutex<Vec<([u8; 32], Sent)>>,
}

impl Hostile {
    /// A node that misbehaves as `mode` says in every signing session.
    pub fn new(mode: Misbehaviour) -> Arc<Self> {
        warn!(?mode, "TEST HOOK: this node tampers with its messages in every signing session");
        Arc::new(Self { mode, sent: Mutex::new(Vec::new()) })
    }

    /// Puts the tampering between `net`'s protocol and its transport.
    pub fn wrap(self: &Arc<Self>, net: &mut SessionNet) {
        let (tx, rx) = mpsc::channel(net.outgoing.max_capacity());
        let out = std::mem::replace(&mut net.outgoing, tx);
        tokio::spawn(Arc::clone(self).forward(net.session, rx, out));
    }

    fn record(&self, session: [u8; 32], to: Option<u16>, payload: &[u8]) {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        if sent.last().is_none_or(|(s, _)| *s != session) {
            if sent.len() == REMEMBERED {
                sent.remove(0);
            }
            sent.push((session, Vec::new()));
        }
        if let Some((_, list)) = sent.last_mut() {
            list.push((to, payload.to_vec()));
        }
    }

    /// What this node sent in its latest session other than `session`.
    fn previous(&self, session: [u8; 32]) -> Sent {
        let sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        sent.iter().rev().find(|(s, _)| *s != session).map(|(_, list)| list.clone()).unwrap_or_default()
    }

    async fn forward(
        self: Arc<Self>,
        session: [u8; 32],
        mut rx: mpsc::Receiver<Envelope>,
        out: mpsc::Sender<Envelope>,
    ) {
        let previous = self.previous(session);
        let mut this: Sent = Vec::new();
        let mut seq = 0u64;
        let mut altered = 0usize;
        let mut held: Option<Envelope> = None;
        let mut send = |mut env: Envelope| {
            seq += 1;
            env.seq = seq;
            let out = out.clone();
            async move { out.send(env).await.is_ok() }
        };
        loop {
            let next = match held.take() {
                Some(first) => match tokio::time::timeout(HOLD, rx.recv()).await {
                    Ok(Some(second)) => {
                        altered += 1;
                        held = Some(first);
                        Some(second)
                    }
                    Ok(None) | Err(_) => {
                        send(first).await;
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(env) = next else { break };
            self.record(session, env.to, &env.payload);
            this.push((env.to, env.payload.clone()));
            // 1-based: the how-manieth message to this recipient.
            let k = this.iter().filter(|(to, _)| *to == env.to).count();
            match self.mode {
                Misbehaviour::Garbage => {
                    altered += 1;
                    send(Envelope { payload: b"\"corrupt\"".to_vec(), ..env }).await;
                }
                Misbehaviour::Silent => altered += 1,
                Misbehaviour::Duplicate => {
                    altered += 1;
                    send(env.clone()).await;
                    send(env).await;
                }
                Misbehaviour::Reorder => match held.take() {
                    // The one held goes after this one.
                    Some(first) => {
                        send(env).await;
                        send(first).await;
                    }
                    None => held = Some(env),
                },
                Misbehaviour::WrongRound => {
                    let first = this.iter().find(|(to, _)| *to == env.to).map(|(_, p)| p.clone());
                    match first {
                        Some(payload) if k > 1 => {
                            altered += 1;
                            send(Envelope { payload, ..env }).await;
                        }
                        _ => {
                            send(env).await;
                        }
                    }
                }
                Misbehaviour::Replay => {
                    let old = previous.iter().filter(|(to, _)| *to == env.to).nth(k - 1).map(|(_, p)| p.clone());
                    match old {
                        Some(payload) => {
                            altered += 1;
                            send(Envelope { payload, ..env }).await;
                        }
                        None => {
                            send(env).await;
                        }
                    }
                }
            }
        }
        if let Some(first) = held {
            send(first).await;
        }
        warn!(
            mode = ?self.mode,
            session = %hex::encode(&session[..8]),
            messages = this.len(),
            altered,
            "TEST HOOK: tampered with a signing session"
        );
    }
}
