//! When a node presigns: a pure state machine, fed the time.
//!
//! Signing comes first. A node presigns only when no grant session (keygen,
//! sign) runs on it and none ended less than the quiet time ago; a grant
//! session that begins while a presigning session runs preempts it; and a node
//! is in at most one presigning session at a time, whether it leads it (the
//! presigner, for the signer sets whose lowest index it is) or joins one as a
//! member. The presigner fills the shallowest pool first and, after a failed
//! session, pauses that pool (doubling up to a cap) so that a dead member
//! costs little; a preempted session is not a failure.
//!
//! [`PresignSchedule`] holds that policy and nothing else: no clock, no
//! tasks, no pools. The node's driver (`crate::sessions`) feeds it the events
//! and the current time and does what it answers, so the policy is tested
//! here on a virtual clock in microseconds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::pool::PoolId;

/// What the presigner does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Lead a presigning session for this pool now; the node counts as
    /// presigning until [`PresignSchedule::ended`].
    Lead(PoolId),
    /// Nothing may start before this instant (the quiet time after signing,
    /// or the earliest pause of a pool that needs presignatures ending).
    Until(Instant),
    /// Nothing to do until something changes: a grant session or another
    /// presigning session ends, or a pool drains.
    Idle,
}

/// A member's answer to a presigning proposal, as far as timing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Join {
    /// Join now; the node counts as presigning until [`PresignSchedule::ended`].
    Admitted,
    /// Signing ended lately: not before this instant.
    NotBefore(Instant),
    /// A grant session or another presigning session runs here.
    Busy,
}

/// How a presigning session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It made a presignature.
    Made,
    /// Signing needed the node (here or on another member).
    Preempted,
    /// Anything else: a member refused, timed out or misbehaved.
    Failed,
}

/// The presigning policy of one node.
#[derive(Debug)]
pub struct PresignSchedule {
    quiet: Duration,
    backoff: (Duration, Duration),
    /// Grant sessions running here.
    foreground: usize,
    /// When the last one ended.
    foreground_ended: Option<Instant>,
    /// A presigning session runs here, in either role.
    presigning: bool,
    /// Pools this node leads that failed lately: no attempt before the
    /// instant; the pause that led to it.
    paused: HashMap<PoolId, (Instant, Duration)>,
}

impl PresignSchedule {
    /// A schedule that waits `quiet` after signing and pauses a failing
    /// pool from `backoff.0`, doubling, up to `backoff.1`.
    pub fn new(quiet: Duration, backoff: (Duration, Duration)) -> Self {
        Self { quiet, backoff, foreground: 0, foreground_ended: None, presigning: false, paused: HashMap::new() }
    }

    /// A grant session began. Returns whether a presigning session runs
    /// and must give way.
    pub fn foreground_began(&mut self) -> bool {
        self.foreground += 1;
        self.presigning
    }

    /// A grant session ended at `now`.
    pub fn foreground_ended(&mut self, now: Instant) {
        self.foreground = self.foreground.saturating_sub(1);
        self.foreground_ended = Some(now);
    }

    /// Grant sessions running now.
    pub fn foreground(&self) -> usize {
        self.foreground
    }

    /// Whether a presigning session runs here.
    pub fn presigning(&self) -> bool {
        self.presigning
    }

    /// `None` when signing leaves room for presigning at `now`; else
    /// `Some(None)` while a grant session runs, `Some(Some(t))` during the
    /// quiet time ending at `t`.
    fn signing_holds(&self, now: Instant) -> Option<Option<Instant>> {
        if self.foreground > 0 {
            return Some(None);
        }
        let until = self.foreground_ended? + self.quiet;
        (now < until).then_some(Some(until))
    }

    /// What the presigner does at `now`, given every pool it leads with its
    /// depth, the pool size `target` and whether the node holds all the
    /// presignatures it may.
    pub fn next(
        &mut self,
        now: Instant,
        pools: impl IntoIterator<Item = (PoolId, usize)>,
        target: usize,
        at_capacity: bool,
    ) -> Next {
        if self.presigning || target == 0 || at_capacity {
            return Next::Idle;
        }
        match self.signing_holds(now) {
            Some(Some(until)) => return Next::Until(until),
            Some(None) => return Next::Idle,
            None => {}
        }
        let mut best: Option<(usize, PoolId)> = None;
        let mut resume: Option<Instant> = None;
        for (pool, depth) in pools {
            if depth >= target {
                continue;
            }
            if let Some((until, _)) = self.paused.get(&pool).filter(|(until, _)| *until > now) {
                resume = Some(resume.map_or(*until, |r| r.min(*until)));
                continue;
            }
            // Ties go to the first listed: the driver lists in a stable order.
            if best.as_ref().is_none_or(|(lowest, _)| depth < *lowest) {
                best = Some((depth, pool));
            }
        }
        match (best, resume) {
            (Some((_, pool)), _) => {
                self.presigning = true;
                Next::Lead(pool)
            }
            (None, Some(until)) => Next::Until(until),
            (None, None) => Next::Idle,
        }
    }

    /// Whether this node may join a presigning session proposed to it at
    /// `now`.
    pub fn join(&mut self, now: Instant) -> Join {
        if self.presigning {
            return Join::Busy;
        }
        match self.signing_holds(now) {
            Some(Some(until)) => Join::NotBefore(until),
            Some(None) => Join::Busy,
            None => {
                self.presigning = true;
                Join::Admitted
            }
        }
    }

    /// The presigning session this node was in ended at `now`, `how`; `led`
    /// is its pool if this node led it. Returns the pause a failure put on
    /// that pool.
    pub fn ended(&mut self, led: Option<&PoolId>, how: Ended, now: Instant) -> Option<Duration> {
        self.presigning = false;
        let pool = led?;
        match how {
            Ended::Made => {
                self.paused.remove(pool);
                None
            }
            Ended::Preempted => None,
            Ended::Failed => {
                let pause = self.paused.get(pool).map_or(self.backoff.0, |(_, last)| (*last * 2).min(self.backoff.1));
                self.paused.insert(pool.clone(), (now + pause, pause));
                Some(pause)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_secs(1);
    const BACKOFF: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(60));

    fn pool(set: &[u16]) -> PoolId {
        PoolId::new("default", &[], set)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn fills_the_shallowest_pool_one_session_at_a_time() {
        let t0 = Instant::now();
        let mut s = PresignSchedule::new(QUIET, BACKOFF);
        let pools = vec![(pool(&[0, 1]), 2), (pool(&[0, 2]), 1), (pool(&[0, 3]), 1), (pool(&[0, 4]), 4)];
        assert_eq!(s.next(t0, pools.clone(), 4, false), Next::Lead(pool(&[0, 2])), "shallowest, first of a tie");
        assert!(s.presigning());
        assert_eq!(s.next(t0, pools.clone(), 4, false), Next::Idle, "one at a time");
        assert_eq!(s.join(t0), Join::Busy, "nor as a member meanwhile");
        assert_eq!(s.ended(Some(&pool(&[0, 2])), Ended::Made, t0), None);
        assert_eq!(s.next(t0, pools.clone(), 4, false), Next::Lead(pool(&[0, 2])));
        s.ended(None, Ended::Made, t0);
        assert_eq!(s.next(t0, vec![(pool(&[0, 1]), 4)], 4, false), Next::Idle, "all full");
        assert_eq!(s.next(t0, pools.clone(), 4, true), Next::Idle, "the node holds all it may");
        assert_eq!(s.next(t0, pools, 0, false), Next::Idle, "pools off");
    }

    #[test]
    fn signing_preempts_and_then_keeps_presigning_away_for_the_quiet_time() {
        let t0 = Instant::now();
        let mut s = PresignSchedule::new(QUIET, BACKOFF);
        let pools = vec![(pool(&[0, 1]), 0)];
        // Signing with no presigning running preempts nothing.
        assert!(!s.foreground_began());
        assert_eq!(s.next(t0, pools.clone(), 2, false), Next::Idle, "a grant session runs");
        s.foreground_ended(t0);
        assert_eq!(s.next(t0, pools.clone(), 2, false), Next::Until(t0 + QUIET));
        let t1 = t0 + QUIET;
        assert_eq!(s.next(t1, pools.clone(), 2, false), Next::Lead(pool(&[0, 1])));
        // Two signing sessions begin while it runs: each finds it running.
        assert!(s.foreground_began(), "a running presigning session must give way");
        assert!(s.foreground_began(), "until it has, every grant session says so");
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!(s.ended(Some(&pool(&[0, 1])), Ended::Preempted, t2), None, "preemption is not a failure");
        assert!(!s.presigning());
        assert_eq!(s.next(t2, pools.clone(), 2, false), Next::Idle, "grant sessions still run");
        assert_eq!(s.join(t2), Join::Busy);
        s.foreground_ended(t2);
        assert_eq!(s.foreground(), 1);
        assert_eq!(s.join(t2 + secs(1)), Join::Busy, "one still runs");
        let t3 = t2 + secs(2);
        s.foreground_ended(t3);
        assert_eq!(s.foreground(), 0);
        assert_eq!(s.next(t3, pools.clone(), 2, false), Next::Until(t3 + QUIET));
        assert_eq!(s.join(t3 + QUIET / 2), Join::NotBefore(t3 + QUIET));
        assert_eq!(s.next(t3 + QUIET, pools, 2, false), Next::Lead(pool(&[0, 1])), "not paused by the preemption");
    }

    #[test]
    fn a_failing_pool_pauses_doubling_up_to_the_cap_and_others_go_on() {
        let t0 = Instant::now();
        let mut s = PresignSchedule::new(QUIET, BACKOFF);
        let (bad, good) = (pool(&[0, 1]), pool(&[0, 2]));
        let pools = || vec![(bad.clone(), 0), (good.clone(), 1)];
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..6 {
            assert_eq!(s.next(now, pools(), 2, false), Next::Lead(bad.clone()));
            pauses.push(s.ended(Some(&bad), Ended::Failed, now).unwrap());
            // While it pauses, the other pool is filled.
            assert_eq!(s.next(now, pools(), 2, false), Next::Lead(good.clone()));
            s.ended(Some(&good), Ended::Made, now);
            // Then nothing until the pause ends (the good pool is full now).
            let resume = now + *pauses.last().unwrap();
            assert_eq!(s.next(now, vec![(bad.clone(), 0), (good.clone(), 2)], 2, false), Next::Until(resume));
            now = resume;
        }
        assert_eq!(pauses, [secs(5), secs(10), secs(20), secs(40), secs(60), secs(60)]);
        // One success resets it.
        assert_eq!(s.next(now, pools(), 2, false), Next::Lead(bad.clone()));
        s.ended(Some(&bad), Ended::Made, now);
        assert_eq!(s.next(now, pools(), 2, false), Next::Lead(bad.clone()));
        assert_eq!(s.ended(Some(&bad), Ended::Failed, now), Some(secs(5)));
        // A member's failure pauses nothing it leads.
        assert_eq!(s.join(now), Join::Admitted);
        assert_eq!(s.ended(None, Ended::Failed, now), None);
    }
}
