//! The policy ledger's arithmetic over generated request streams
//! (proptest): whatever arrives, in whatever order of namespaces, amounts
//! and gaps, the approvals never exceed a rate or spend limit in any
//! window, and a request is denied only when approving it would.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use torcus_crds::{PolicySpec, RateLimit, RateLimitScope, SpendLimit};
use torcus_operator::policy::{Ledger, Request, Rule};

prop_compose! {
    /// (namespace index, amount, seconds since the previous request)
    fn a_stream()(stream in proptest::collection::vec((0usize..2, 0u64..60, 0u64..40), 1..60)) -> Vec<(usize, u64, u64)> {
        stream
    }
}

const NAMESPACES: [&str; 2] = ["vault", "payments"];

fn policy(requests: u32, rate_period: u64, scope: RateLimitScope, limit: u64, spend_period: u64) -> PolicySpec {
    PolicySpec {
        allowed_namespaces: Some(NAMESPACES.map(str::to_owned).to_vec()),
        rate_limits: vec![RateLimit { scope, label: None, requests, period: format!("{rate_period}s") }],
        spend_limits: vec![SpendLimit { amount_label: "amount".into(), limit, period: format!("{spend_period}s") }],
        ..PolicySpec::default()
    }
}

/// Approvals in `(at - period, at]`, as the policy documents its windows.
fn within(
    approved: &[(SystemTime, usize, u64)],
    at: SystemTime,
    period: u64,
) -> impl Iterator<Item = &(SystemTime, usize, u64)> {
    let start = at - Duration::from_secs(period);
    approved.iter().filter(move |(t, _, _)| *t > start && *t <= at)
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn approvals_never_exceed_a_limit_and_denials_are_needed(
        stream in a_stream(),
        requests in 1u32..6,
        rate_period in 1u64..120,
        per_namespace in any::<bool>(),
        limit in 0u64..200,
        spend_period in 1u64..120,
    ) {
        let scope = if per_namespace { RateLimitScope::Namespace } else { RateLimitScope::Cluster };
        let policy = policy(requests, rate_period, scope, limit, spend_period);
        let mut ledger = Ledger::new();
        let mut approved: Vec<(SystemTime, usize, u64)> = Vec::new();
        let mut at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for (i, (ns, amount, gap)) in stream.into_iter().enumerate() {
            at += Duration::from_secs(gap);
            let uid = format!("uid-{i}");
            let labels = BTreeMap::from([("amount".to_owned(), amount.to_string())]);
            let request = Request { uid: &uid, namespace: NAMESPACES[ns], cluster_namespace: "vault", labels: &labels, payload_bytes: None, at };
            let counted = within(&approved, at, rate_period).filter(|(_, n, _)| !per_namespace || *n == ns).count();
            let spent: u64 = within(&approved, at, spend_period).map(|(_, _, a)| a).sum();
            let rate_full = counted >= requests as usize;
            let spend_over = spent + amount > limit;
            match ledger.admit(&policy, &request) {
                Ok(()) => {
                    prop_assert!(!rate_full, "approved {} beyond {requests} per {rate_period}s", counted + 1);
                    prop_assert!(!spend_over, "approved {amount} over {spent} of {limit} per {spend_period}s");
                    approved.push((at, ns, amount));
                }
                Err(denial) => {
                    // Rate limits are checked before spend limits.
                    let expected = if rate_full { Rule::RateLimit } else { Rule::SpendLimit };
                    prop_assert!(rate_full || spend_over, "denied without need: {}", denial.message);
                    prop_assert_eq!(denial.rule, expected, "{}", denial.message);
                    // Asking again changes nothing: a denial records nothing.
                    prop_assert!(ledger.admit(&policy, &request).is_err());
                }
            }
        }
    }
}
