//! Health scoring, pure: reliability from session outcomes, latency score,
//! and uptime from heartbeat coverage, each over the registry's window.

use super::*;

/// Weight of the newest sample in the latency average.
pub(super) const LATENCY_ALPHA: f64 = 0.3;

/// Latency at or below which the latency score is 1.
pub(super) const LATENCY_GOOD: f64 = 0.050;

/// Latency at or above which the latency score is 0.
pub(super) const LATENCY_BAD: f64 = 2.0;

/// Outcome counts are kept in this many buckets per window.
pub(super) const OUTCOME_BUCKETS: u32 = 60;

pub(super) fn health(reliability: f64, latency_score: f64, uptime_score: f64) -> f64 {
    (0.4 * reliability + 0.3 * latency_score + 0.3 * uptime_score).clamp(0.0, 1.0)
}

/// 1 at [`LATENCY_GOOD`] seconds or less, 0 at [`LATENCY_BAD`] or more, linear between.
pub(super) fn latency_score(latency_secs: f64) -> f64 {
    (1.0 - (latency_secs - LATENCY_GOOD) / (LATENCY_BAD - LATENCY_GOOD)).clamp(0.0, 1.0)
}

#[derive(Debug)]
pub(super) struct NodeState {
    /// The node's latest registration.
    pub(super) registration: Registration,
    pub(super) registered_at_ms: u64,
    /// Start of the uptime span: the registration this operator saw first.
    pub(super) first_registered: Instant,
    /// Last registration or heartbeat: what online means.
    pub(super) last_seen: Instant,
    pub(super) last_heartbeat_ms: Option<u64>,
    /// `sent_at` of the last accepted message; later ones must be newer (replay guard).
    pub(super) last_sent_at: u64,
    pub(super) sessions_ok: u64,
    pub(super) sessions_failed: u64,
    /// The key shares it holds, by its last heartbeat.
    pub(super) keys: Vec<torcus_contract::registry::HeldKey>,
    /// Disjoint, ordered spans `[start, end)` during which a heartbeat covered the node.
    /// Overlapping covers merge, so a node heartbeating too often still takes one entry.
    pub(super) covered: VecDeque<(Instant, Instant)>,
    pub(super) outcomes: VecDeque<OutcomeBucket>,
    /// Exponentially weighted latency in seconds.
    pub(super) latency: Option<f64>,
}

#[derive(Debug)]
pub(super) struct OutcomeBucket {
    pub(super) start: Instant,
    pub(super) ok: u64,
    pub(super) failed: u64,
}

impl NodeState {
    pub(super) fn new(registration: Registration, now: Instant) -> Self {
        Self {
            registration,
            registered_at_ms: 0,
            first_registered: now,
            last_seen: now,
            last_heartbeat_ms: None,
            last_sent_at: 0,
            sessions_ok: 0,
            sessions_failed: 0,
            keys: Vec::new(),
            covered: VecDeque::new(),
            outcomes: VecDeque::new(),
            latency: None,
        }
    }

    /// A registration or heartbeat arrived at `now`.
    pub(super) fn seen(&mut self, now: Instant, cover: Duration, window: Duration) {
        self.last_seen = now;
        let end = now + cover;
        match self.covered.back_mut() {
            Some((_, last_end)) if now <= *last_end => *last_end = (*last_end).max(end),
            _ => self.covered.push_back((now, end)),
        }
        if let Some(horizon) = now.checked_sub(window) {
            while self.covered.front().is_some_and(|(_, end)| *end <= horizon) {
                self.covered.pop_front();
            }
        }
    }

    pub(super) fn uptime(&self, now: Instant, window: Duration) -> f64 {
        let start = now.checked_sub(window).map_or(self.first_registered, |w| w.max(self.first_registered));
        let span = now.saturating_duration_since(start);
        if span.is_zero() {
            return 1.0;
        }
        let covered: Duration =
            self.covered.iter().map(|(s, e)| (*e).min(now).saturating_duration_since((*s).max(start))).sum();
        (covered.as_secs_f64() / span.as_secs_f64()).clamp(0.0, 1.0)
    }

    pub(super) fn prune_outcomes(&mut self, now: Instant, window: Duration, bucket_width: Duration) {
        if let Some(horizon) = now.checked_sub(window) {
            while self.outcomes.front().is_some_and(|b| b.start + bucket_width <= horizon) {
                self.outcomes.pop_front();
            }
        }
    }

    pub(super) fn reliability(&self, now: Instant, window: Duration, bucket_width: Duration) -> f64 {
        let horizon = now.checked_sub(window);
        let live = self.outcomes.iter().filter(|b| horizon.is_none_or(|h| b.start + bucket_width > h));
        let (ok, failed) = live.fold((0u64, 0u64), |(ok, failed), b| (ok + b.ok, failed + b.failed));
        if ok + failed == 0 { 1.0 } else { ok as f64 / (ok + failed) as f64 }
    }
}
