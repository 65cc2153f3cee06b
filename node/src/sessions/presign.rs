//! Presigning: the background presigner (the leader of a signer set) and a
//! member's side of a presigning session, with the guards through which
//! signing and presigning tell the [`PresignSchedule`] what runs.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand_core::RngCore;
use tokio::sync::{Notify, mpsc, watch};
use torcus_contract::{Control, InitiatorHandshake, ParticipantHandshake};
use tracing::{debug, info, warn};

use super::{HANDSHAKE_TIMEOUT, PREEMPTED, PRESIGN_JOIN_WAIT, SessionError, Sessions};
use crate::engine::{self, Presig, Share};
use crate::pool::PoolId;
use crate::presign_schedule::{Ended, Join, Next, PresignSchedule};
use crate::transport::Transport;

/// How often the presigner looks at its pools when nothing woke it.
const PRESIGNER_TICK: Duration = Duration::from_secs(1);
/// Presigning session ids remembered to refuse a repeated proposal.
const SEEN_PRESIGN_SESSIONS: usize = 4096;
/// Most presignature ids a presigning proposal may list (beyond the target).
const MAX_HELD: usize = 1024;

/// Presigning: the background presigner (the leader's side) and a member's
/// side of a presigning session.
impl<T: Transport> Sessions<T> {
    /// The presigning schedule, locked.
    pub(super) fn schedule(&self) -> MutexGuard<'_, PresignSchedule> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks a grant session as running until the guard drops; a
    /// presigning session running here gives way.
    pub(super) fn foreground(&self) -> Foreground<'_> {
        let mut schedule = self.schedule();
        if schedule.foreground_began() {
            debug!("a grant session preempts presigning");
        }
        self.foreground.send_replace(schedule.foreground());
        Foreground { wakes: self.wakes() }
    }

    /// Counts this node as presigning (the schedule has admitted it) until
    /// the guard ends or drops; `led`: the pool, when this node leads.
    pub(super) fn presigning(&self, led: Option<PoolId>) -> Presigning<'_> {
        Presigning { wakes: self.wakes(), led, ended: false }
    }

    fn wakes(&self) -> Wakes<'_> {
        Wakes {
            schedule: &self.schedule,
            foreground: &self.foreground,
            presigner: &self.presigner_wake,
            changed: &self.schedule_changed,
        }
    }

    /// Completes once a grant session runs on this node.
    pub(super) async fn foreground_running(&self) {
        let mut running = self.foreground.subscribe();
        if running.wait_for(|count| *count > 0).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The presigner's loop; runs until its task is cancelled. The
    /// schedule decides; this only waits and runs what it says.
    pub(super) async fn presigner(&self) {
        let sets = led_sets(self.me, self.nodes, self.threshold);
        info!(sets = sets.len(), paths = self.presign_paths.len(), target = self.pools.target(), "presigner started");
        loop {
            let led = self.led_pools(&sets);
            let next = self.schedule().next(Instant::now(), led, self.pools.target(), self.pools.at_capacity());
            match next {
                Next::Lead(pool) => {
                    let presigning = self.presigning(Some(pool.clone()));
                    let result = self.lead_presign(&pool).await;
                    let how = ended_how(&result);
                    if let Some(pause) = presigning.end(how)
                        && let Err(error) = &result
                    {
                        warn!(?pool, %error, retry_in = ?pause, "presigning failed");
                    } else if how == Ended::Preempted {
                        debug!(?pool, "presigning preempted");
                    }
                }
                Next::Until(at) => {
                    let _ = tokio::time::timeout_at(at.into(), self.presigner_wake.notified()).await;
                }
                // Woken when a session ends or a key appears; the tick
                // catches pools drained by signing.
                Next::Idle => {
                    let _ = tokio::time::timeout(PRESIGNER_TICK, self.presigner_wake.notified()).await;
                }
            }
        }
    }

    /// Every pool this node leads (key, path, set), with its depth, in a
    /// stable order.
    fn led_pools(&self, sets: &[Vec<u16>]) -> Vec<(PoolId, usize)> {
        // ECDSA keys only: FROST keeps no presignatures.
        let mut keys: Vec<String> = self
            .shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, held)| matches!(held, super::Held::Ecdsa(_)))
            .map(|(name, _)| name.clone())
            .collect();
        keys.sort();
        let mut led = Vec::new();
        for key in &keys {
            for path in &self.presign_paths {
                for set in sets {
                    let pool = PoolId::new(key, path, set);
                    let depth = self.pools.depth(&pool);
                    led.push((pool, depth));
                }
            }
        }
        led
    }

    /// Runs one presigning session for `pool`, led by this node (which the
    /// schedule counts as presigning throughout).
    async fn lead_presign(&self, pool: &PoolId) -> Result<(), SessionError> {
        let share = self.share(&pool.key)?;
        let mut session = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut session);
        self.seen_presign.lock().unwrap_or_else(PoisonError::into_inner).insert(session);
        let mut control = self.open_handshake(session);
        let set = &pool.set;
        let result = async {
            let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
            let mut handshake = InitiatorHandshake::new(session, set.clone(), self.me, deadline);
            let proposal = Control::PresignProposal {
                session_id: session,
                key: pool.key.clone(),
                path: pool.path.clone(),
                participants: set.clone(),
                held: self.pools.ids(pool),
            };
            self.broadcast_control(set, session, &proposal).await;
            self.handshake(&mut handshake, &mut control, None).await?;
            self.presign(session, pool, share, control).await
        }
        .await;
        self.finish_presign(session, pool, result)
    }

    /// A member's answer to a presigning proposal from `from`: refused with
    /// an Abort to the sender unless every check passes, else acked and run.
    pub(super) async fn join_presign(self: Arc<Self>, from: u16, session: [u8; 32], pool: PoolId, held: Vec<[u8; 32]>) {
        let participants = pool.set.clone();
        let (presigning, share) = match self.admit_presign(from, session, &pool, &held).await {
            Ok(admitted) => admitted,
            Err(reason) => {
                debug!(%reason, "refused a presigning proposal");
                self.metrics.sessions.with_label_values(&["presign", "refused"]).inc();
                let reason = format!("party {}: {reason}", self.me);
                self.refuse(from, session, reason).await;
                return;
            }
        };
        let mut control = self.open_handshake(session);
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut handshake = ParticipantHandshake::for_session(session, participants, from, self.me, deadline);
        self.send_control(from, session, &handshake.ack()).await;
        let result = async {
            self.handshake(&mut handshake, &mut control, None).await?;
            self.presign(session, &pool, share, control).await
        }
        .await;
        let result = self.finish_presign(session, &pool, result);
        presigning.end(ended_how(&result));
        if let Err(error) = result {
            debug!(%error, "presigning session failed");
        }
    }

    /// The checks a member makes before it acks a presigning proposal, then
    /// the wait (bounded) until this node is free to presign: no grant
    /// session running or just ended, no other presigning session. Returns
    /// the guard that counts this node as presigning, and the key share.
    async fn admit_presign(
        &self,
        from: u16,
        session: [u8; 32],
        pool: &PoolId,
        held: &[[u8; 32]],
    ) -> Result<(Presigning<'_>, Arc<Share>), String> {
        let (key, participants) = (pool.key.as_str(), pool.set.as_slice());
        if self.pools.target() == 0 {
            return Err("presignature pools are off here".into());
        }
        if !self.presign_paths.contains(&pool.path) {
            return Err(format!("derivation path {:?} is not one this cluster keeps presignatures for", pool.path));
        }
        if participants.len() != usize::from(self.threshold) {
            return Err(format!("{} participants, but the threshold is {}", participants.len(), self.threshold));
        }
        if !participants.windows(2).all(|pair| pair[0] < pair[1]) {
            return Err("participants are not distinct and ascending".into());
        }
        if participants.iter().any(|p| *p >= self.nodes) {
            return Err(format!("participants {participants:?} are not all in this {}-party cluster", self.nodes));
        }
        if !participants.contains(&self.me) {
            return Err("not a participant".into());
        }
        if participants.first() != Some(&from) || from == self.me {
            return Err(format!("proposal came from party {from}, not from the lowest index of the set"));
        }
        if held.len() > self.pools.target().max(MAX_HELD) {
            return Err(format!("{} presignatures claimed held", held.len()));
        }
        let share = self.share(key).map_err(|e| e.to_string())?;
        let open = self.handshakes.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&session);
        if open || !self.seen_presign.lock().unwrap_or_else(PoisonError::into_inner).insert(session) {
            return Err("session id seen before".into());
        }
        // Presignatures the leader no longer holds can never be offered by
        // it and would only fill this pool: drop them.
        let dropped = self.pools.retain(pool, held);
        if dropped > 0 {
            debug!(dropped, "dropped presignatures the leader does not hold");
        }
        if self.pools.depth(pool) >= self.pools.target() {
            return Err("presignature pool is full".into());
        }
        if self.pools.at_capacity() {
            return Err("this node holds as many presignatures as it may".into());
        }
        let deadline = Instant::now() + PRESIGN_JOIN_WAIT;
        loop {
            let changed = self.schedule_changed.notified();
            tokio::pin!(changed);
            // Registered before asking, so a change in between wakes it.
            changed.as_mut().enable();
            let now = Instant::now();
            let until = match self.schedule().join(now) {
                Join::Admitted => return Ok((self.presigning(None), share)),
                Join::NotBefore(at) => at.min(deadline),
                Join::Busy => deadline,
            };
            if now >= deadline {
                return Err("busy".into());
            }
            let _ = tokio::time::timeout_at(until.into(), changed).await;
        }
    }

    /// The presigning protocol of a started session, as either role: the
    /// derivation path is set on the protocol before the presignature
    /// exists.
    async fn presign(
        &self,
        session: [u8; 32],
        pool: &PoolId,
        share: Arc<Share>,
        control: mpsc::Receiver<(u16, Control)>,
    ) -> Result<Presig, SessionError> {
        let eid = torcus_contract::presign_execution_id(&pool.key, &pool.path, &pool.set, &session);
        let net = self.net(session, pool.set.clone(), torcus_contract::session::sign_idle_deadline(pool.set.len()));
        let path = pool.path.clone();
        let protocol = async {
            // Signing first: a grant session starting here ends this one
            // (and, by the Abort this sends, the other members' part).
            tokio::select! {
                presig = engine::on_own_thread(async move { engine::presign(&eid, &share, &path, net).await }) => Ok(presig?),
                () = self.foreground_running() => Err(SessionError::Preempted),
            }
        };
        let deadline = torcus_contract::session::sign_deadline(pool.set.len());
        self.run_started(session, &pool.set, "presign", deadline, protocol, control).await
    }

    /// Closes a presigning session; a presignature goes into the pool under
    /// the session id, which every member uses.
    fn finish_presign(
        &self,
        session: [u8; 32],
        pool: &PoolId,
        result: Result<Presig, SessionError>,
    ) -> Result<(), SessionError> {
        self.handshakes.lock().unwrap_or_else(PoisonError::into_inner).remove(&session);
        self.router.close(&session);
        match result {
            Ok(presig) => {
                self.metrics.sessions.with_label_values(&["presign", "completed"]).inc();
                self.metrics.presignatures_generated.inc();
                self.pools.insert(pool, session, presig);
                debug!(?pool, depth = self.pools.depth(pool), "made a presignature");
                Ok(())
            }
            Err(error) => {
                self.metrics.sessions.with_label_values(&["presign", error.reason()]).inc();
                Err(error)
            }
        }
    }
}

/// What the schedule's guards change and whom they wake.
pub(super) struct Wakes<'a> {
    schedule: &'a Mutex<PresignSchedule>,
    foreground: &'a watch::Sender<usize>,
    presigner: &'a Notify,
    changed: &'a Notify,
}

impl Wakes<'_> {
    fn changed(&self) {
        self.presigner.notify_one();
        self.changed.notify_waiters();
    }
}

/// Counts a grant session as running for as long as it lives.
pub(super) struct Foreground<'a> {
    wakes: Wakes<'a>,
}

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        let mut schedule = self.wakes.schedule.lock().unwrap_or_else(PoisonError::into_inner);
        schedule.foreground_ended(Instant::now());
        self.wakes.foreground.send_replace(schedule.foreground());
        drop(schedule);
        self.wakes.changed();
    }
}

/// Counts this node as presigning until [`end`](Self::end) or drop (a
/// session cut short counts as failed).
pub(super) struct Presigning<'a> {
    wakes: Wakes<'a>,
    led: Option<PoolId>,
    ended: bool,
}

impl Presigning<'_> {
    /// The session ended `how`; returns the pause a failure put on the pool
    /// this node leads.
    fn end(mut self, how: Ended) -> Option<std::time::Duration> {
        self.ended = true;
        self.finish(how)
    }

    fn finish(&self, how: Ended) -> Option<std::time::Duration> {
        let mut schedule = self.wakes.schedule.lock().unwrap_or_else(PoisonError::into_inner);
        let pause = schedule.ended(self.led.as_ref(), how, Instant::now());
        drop(schedule);
        self.wakes.changed();
        pause
    }
}

impl Drop for Presigning<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.finish(Ended::Failed);
        }
    }
}

/// How a presigning session's result counts for the schedule: given up
/// for signing (here, or on a member that said so) is not a failure.
fn ended_how<T>(result: &Result<T, SessionError>) -> Ended {
    match result {
        Ok(_) => Ended::Made,
        Err(SessionError::Preempted) => Ended::Preempted,
        Err(SessionError::Aborted(reason) | SessionError::AbortedBy { reason, .. }) if reason.ends_with(PREEMPTED) => {
            Ended::Preempted
        }
        Err(_) => Ended::Failed,
    }
}

/// A bounded set of ids, forgetting the oldest first.
#[derive(Debug, Default)]
pub(super) struct SeenIds {
    order: VecDeque<[u8; 32]>,
    ids: HashSet<[u8; 32]>,
}

impl SeenIds {
    /// Records `id`; false if it was seen already.
    fn insert(&mut self, id: [u8; 32]) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > SEEN_PRESIGN_SESSIONS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }
}

/// The signer sets of `threshold` parties among `0..nodes` whose lowest
/// index is `me`: the ones whose presignatures `me` proposes. Ascending.
pub fn led_sets(me: u16, nodes: u16, threshold: u16) -> Vec<Vec<u16>> {
    fn extend(set: &mut Vec<u16>, from: u16, nodes: u16, size: usize, out: &mut Vec<Vec<u16>>) {
        if set.len() == size {
            out.push(set.clone());
            return;
        }
        for next in from..nodes {
            set.push(next);
            extend(set, next + 1, nodes, size, out);
            set.pop();
        }
    }
    let mut out = Vec::new();
    if threshold == 0 || me >= nodes {
        return out;
    }
    extend(&mut vec![me], me + 1, nodes, usize::from(threshold), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn led_sets_are_the_sets_a_node_is_lowest_in() {
        assert_eq!(led_sets(0, 3, 2), vec![vec![0, 1], vec![0, 2]]);
        assert_eq!(led_sets(1, 3, 2), vec![vec![1, 2]]);
        assert!(led_sets(2, 3, 2).is_empty());
        assert_eq!(led_sets(0, 5, 3).len(), 6);
        assert_eq!(led_sets(2, 5, 3), vec![vec![2, 3, 4]]);
        // Every set of the cluster has exactly one leader.
        let all: Vec<Vec<u16>> = (0..5).flat_map(|me| led_sets(me, 5, 3)).collect();
        let distinct: HashSet<Vec<u16>> = all.iter().cloned().collect();
        assert_eq!((all.len(), distinct.len()), (10, 10));
        assert!(led_sets(3, 3, 2).is_empty());
        assert!(led_sets(0, 3, 0).is_empty());
    }

    #[test]
    fn seen_ids_are_bounded() {
        let mut seen = SeenIds::default();
        assert!(seen.insert([1; 32]));
        assert!(!seen.insert([1; 32]));
        for i in 0..SEEN_PRESIGN_SESSIONS as u32 {
            let mut id = [0; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id[31] = 9;
            seen.insert(id);
        }
        assert_eq!(seen.order.len(), SEEN_PRESIGN_SESSIONS);
        assert_eq!(seen.ids.len(), SEEN_PRESIGN_SESSIONS);
        assert!(seen.insert([1; 32]), "the oldest is forgotten first");
    }
}
