//! Rolling a cluster's nodes when their pod template changes (a new
//! transport mode, image or configuration), within the cluster's disruption
//! budget.
//!
//! Each node is a StatefulSet of its own, so the StatefulSet controller
//! cannot pace a change across nodes: applied at once, every node would
//! restart together and the cluster could not sign until all are back. The
//! operator instead updates at most `nodes − threshold` StatefulSets whose
//! pods are settled (ready, on their StatefulSet's current template) at a
//! time — the same budget as the PodDisruptionBudget — and holds the others
//! back until those are settled again. A node that is not settled anyway
//! (crashing, pending) is updated at once: that costs no availability and
//! may well be its fix.

/// One node's place in a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Template hash the operator wants.
    pub desired: String,
    /// Template hash of the node's StatefulSet now (`None`: no StatefulSet yet).
    pub current: Option<String>,
    /// Whether the node's pod is ready and runs its StatefulSet's current template.
    pub settled: bool,
}

/// Which StatefulSets to apply now, in node order; the rest wait.
pub fn plan(budget: usize, nodes: &[Node]) -> Vec<bool> {
    let mut unavailable = nodes.iter().filter(|n| !n.settled).count();
    nodes
        .iter()
        .map(|n| match &n.current {
            None => true,
            Some(current) if *current == n.desired => true,
            Some(_) if !n.settled => true,
            Some(_) if unavailable < budget.max(1) => {
                unavailable += 1;
                true
            }
            Some(_) => false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(desired: &str, current: Option<&str>, settled: bool) -> Node {
        Node { desired: desired.into(), current: current.map(Into::into), settled }
    }

    #[test]
    fn new_and_unchanged_nodes_are_applied() {
        let nodes = [node("a", None, false), node("a", Some("a"), true), node("a", Some("a"), false)];
        assert_eq!(plan(1, &nodes), [true, true, true]);
    }

    #[test]
    fn a_change_rolls_one_node_at_a_time_within_the_budget() {
        let all_old = [node("b", Some("a"), true), node("b", Some("a"), true), node("b", Some("a"), true)];
        assert_eq!(plan(1, &all_old), [true, false, false]);
        assert_eq!(plan(2, &all_old), [true, true, false]);
        // Node 0 restarting on the new template: the others wait.
        let rolling = [node("b", Some("b"), false), node("b", Some("a"), true), node("b", Some("a"), true)];
        assert_eq!(plan(1, &rolling), [true, false, false]);
        // Node 0 back: the next one goes.
        let next = [node("b", Some("b"), true), node("b", Some("a"), true), node("b", Some("a"), true)];
        assert_eq!(plan(1, &next), [true, true, false]);
    }

    #[test]
    fn a_node_down_anyway_is_updated_and_uses_up_the_budget() {
        let nodes = [node("b", Some("a"), true), node("b", Some("a"), false), node("b", Some("a"), true)];
        assert_eq!(plan(1, &nodes), [false, true, false]);
        // A zero budget still lets one node through: a rollout always ends.
        let nodes = [node("b", Some("a"), true), node("b", Some("a"), true)];
        assert_eq!(plan(0, &nodes), [true, false]);
    }
}
