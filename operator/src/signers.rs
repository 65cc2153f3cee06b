//! Choosing signers after a failed attempt (review finding 5).
//!
//! When a session fails, its initiator reports whom it holds responsible:
//! a participant it could not send to, one whose message did not decode, or
//! the one another participant's Abort named (that participant is then the
//! accuser). Either side of an accusation may be lying — a compromised node
//! can accuse an honest one, or be the one that breaks sessions — so neither
//! is excluded outright. The two are put in *dispute*: no later attempt of
//! the same request has both. A node that breaks every session it is in
//! thereby ends up in dispute with each honest node it met, and the request
//! completes among honest nodes within a few attempts, whichever node lies.

/// A pair of parties that must not sign together again for one request.
pub type Dispute = (u16, u16);

/// Most signer sets looked at when searching for one without a dispute.
const MAX_SETS_TRIED: usize = 100_000;

/// Whether no two members of `set` are in dispute.
pub fn apart(set: &[u16], disputes: &[Dispute]) -> bool {
    !disputes.iter().any(|(a, b)| set.contains(a) && set.contains(b))
}

/// A signer set of `threshold` parties from `healthy` with no dispute in
/// it, as `usual` would choose it (warm sets first) when that choice has
/// none, else the first such set in ascending order. `None` when every set
/// holds a dispute: then the caller chooses as usual, since an accuser may
/// have lied about every honest party.
pub fn choose_apart(
    healthy: &[u16],
    threshold: u16,
    disputes: &[Dispute],
    usual: impl FnOnce() -> Option<Vec<u16>>,
) -> Option<Vec<u16>> {
    if let Some(set) = usual().filter(|set| apart(set, disputes)) {
        return Some(set);
    }
    let mut healthy = healthy.to_vec();
    healthy.sort_unstable();
    healthy.dedup();
    let (n, t) = (healthy.len(), usize::from(threshold));
    if t == 0 || t > n {
        return None;
    }
    // Combinations of t out of n, in lexicographic order of positions.
    let mut at: Vec<usize> = (0..t).collect();
    for _ in 0..MAX_SETS_TRIED {
        let set: Vec<u16> = at.iter().map(|&i| healthy[i]).collect();
        if apart(&set, disputes) {
            return Some(set);
        }
        let mut i = t;
        loop {
            if i == 0 {
                return None;
            }
            i -= 1;
            if at[i] != i + n - t {
                break;
            }
        }
        at[i] += 1;
        for j in i + 1..t {
            at[j] = at[j - 1] + 1;
        }
    }
    None
}

/// The disputes a failed attempt among `participants` leaves, from its
/// initiator's report: between the party held responsible and its accuser
/// (the initiator itself when it names none). A report that names nobody,
/// or does not hold together (a party outside the attempt, one accusing
/// itself), leaves the initiator, the only one whose word there is, at odds
/// with each other participant: a silent or lying party is then kept apart
/// from the initiator either way.
pub fn disputes(initiator: u16, participants: &[u16], blamed: Option<u16>, accuser: Option<u16>) -> Vec<Dispute> {
    let pair = |a: u16, b: u16| (a.min(b), a.max(b));
    let accuser = accuser.unwrap_or(initiator);
    match blamed {
        Some(blamed) if blamed != accuser && participants.contains(&blamed) && participants.contains(&accuser) => {
            vec![pair(accuser, blamed)]
        }
        _ => participants.iter().filter(|p| **p != initiator).map(|p| pair(initiator, *p)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_choice_stands_when_it_holds_no_dispute() {
        let set = choose_apart(&[0, 1, 2], 2, &[(0, 1)], || Some(vec![1, 2]));
        assert_eq!(set, Some(vec![1, 2]));
    }

    #[test]
    fn a_disputed_pair_is_never_chosen_together_while_another_set_exists() {
        assert_eq!(choose_apart(&[0, 1, 2], 2, &[(0, 2)], || Some(vec![0, 2])), Some(vec![0, 1]));
        assert_eq!(choose_apart(&[0, 1, 2], 2, &[(0, 2), (0, 1)], || Some(vec![0, 2])), Some(vec![1, 2]));
        assert_eq!(choose_apart(&[0, 1, 2], 2, &[(0, 2), (0, 1), (1, 2)], || Some(vec![0, 2])), None);
        assert_eq!(choose_apart(&[0, 1], 3, &[], || None), None);
    }

    /// A node that breaks every session it is in, whoever reports it and
    /// whichever honest node it accuses, is left out once it is in dispute
    /// with all but t - 2 honest nodes: the request completes by attempt
    /// n - t + 2.
    #[test]
    fn a_node_that_breaks_every_session_is_kept_apart_from_each_honest_node_it_met() {
        for (n, t) in [(3u16, 2u16), (4, 2), (5, 3), (7, 4)] {
            for bad in 0..n {
                let healthy: Vec<u16> = (0..n).collect();
                let mut disputes = Vec::new();
                let mut attempts = 0;
                let signed = loop {
                    attempts += 1;
                    assert!(attempts <= usize::from(n - t + 2), "n={n} t={t} bad={bad}: {disputes:?}");
                    // The usual choice always includes the bad node if it can.
                    let usual = || {
                        let mut set: Vec<u16> = std::iter::once(bad).chain(healthy.iter().copied()).collect();
                        set.dedup();
                        set.truncate(usize::from(t));
                        set.sort_unstable();
                        Some(set)
                    };
                    let set = choose_apart(&healthy, t, &disputes, usual).unwrap();
                    if !set.contains(&bad) {
                        break set;
                    }
                    // It names an honest member falsely, as initiator or accuser.
                    let victim = *set.iter().find(|p| **p != bad).unwrap();
                    disputes.extend(super::disputes(bad, &set, Some(victim), None));
                };
                assert!(!signed.contains(&bad));
            }
        }
    }

    #[test]
    fn a_dispute_is_between_accuser_and_accused() {
        let set = [0, 1, 2];
        assert_eq!(disputes(0, &set, Some(2), None), [(0, 2)]);
        assert_eq!(disputes(0, &set, Some(2), Some(1)), [(1, 2)]);
        assert_eq!(disputes(2, &set, Some(0), None), [(0, 2)]);
    }

    /// Silence, or a report that does not hold together, is set against
    /// the initiator: a lying initiator cannot stay out of every dispute.
    #[test]
    fn a_report_naming_nobody_sets_the_initiator_against_the_rest() {
        let set = [0, 1, 2];
        let reports =
            [(None, None), (None, Some(1)), (Some(1), None), (Some(2), Some(2)), (Some(7), None), (Some(1), Some(9))];
        for (blamed, accuser) in reports {
            let got = disputes(1, &set, blamed, accuser);
            assert_eq!(got, [(0, 1), (1, 2)], "{blamed:?} accused by {accuser:?}");
        }
    }
}
