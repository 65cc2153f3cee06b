//! Deciding which certificates a cluster needs: given what its Secrets hold
//! now, keep what is still good and issue what is missing, wrong or close to
//! expiry. Pure (time goes in as an argument), so renewal and CA rolls are
//! tested without a cluster.
//!
//! A CA roll never cuts trust hard. It has two phases: first the next CA is
//! *staged* — added to the trust bundle every node and the operator use,
//! while leaves are still issued by the current CA — and only after
//! [`Lifetimes::propagation`] (long enough for every kubelet to refresh the
//! mounted Secrets) is it *promoted* and leaves are re-issued under it. The
//! old CA stays in the bundle until it expires.

use std::collections::BTreeMap;
use std::net::IpAddr;

use torcus_certs::{
    CertificateAuthority, Duration, Identity, IssuedCertificate, OffsetDateTime, Role, SecretPem, TrustBundle,
};

/// Whose certificate a leaf is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leaf {
    /// Node of party index `.0`.
    Node(u16),
    /// The operator's client certificate.
    Operator,
}

/// Certificate lifetimes of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// Validity of a leaf certificate.
    pub leaf_validity: Duration,
    /// Renew a leaf with less than this left.
    pub renew_before: Duration,
    /// How long a staged CA is trusted before it issues anything: the time a
    /// kubelet may take to refresh a mounted Secret, with margin.
    pub propagation: Duration,
}

/// Default for [`Lifetimes::propagation`]: kubelets refresh Secret volumes
/// within their sync period plus cache TTL (about two minutes by default).
pub const DEFAULT_PROPAGATION: Duration = Duration::minutes(5);

impl Lifetimes {
    /// The CA outlives four leaves.
    pub fn ca_validity(&self) -> Duration {
        self.leaf_validity * 4
    }

    /// Stage the next CA early enough that, after propagation, a leaf issued
    /// by the old one still gets its full validity.
    pub fn ca_renew_before(&self) -> Duration {
        self.leaf_validity + self.renew_before + self.propagation
    }
}

/// What the cluster's Secrets hold now (PEM text), as far as they exist.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    /// CA certificate and key.
    pub ca: Option<(String, SecretPem)>,
    /// The staged next CA, its key, and when it was staged.
    pub next: Option<(String, SecretPem, OffsetDateTime)>,
    /// Trust bundle from the CA Secret or, if that is gone, from a leaf's Secret.
    pub bundle: Option<String>,
    /// Leaf certificates and keys.
    pub leaves: BTreeMap<Leaf, IssuedCertificate>,
}

/// What each leaf should carry besides its identity.
#[derive(Clone, Debug, Default)]
pub struct LeafRequest {
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs (the pod IP once known).
    pub ips: Vec<IpAddr>,
}

/// The certificates a cluster should have, and what changed to get there.
#[derive(Debug)]
pub struct Pki {
    /// The CA that issues leaves.
    pub ca: CertificateAuthority,
    /// The staged next CA and when it was staged.
    pub next: Option<(CertificateAuthority, OffsetDateTime)>,
    /// The CAs everyone trusts, newest first.
    pub bundle: TrustBundle,
    /// Every leaf.
    pub leaves: BTreeMap<Leaf, IssuedCertificate>,
    /// What was issued, for Events and logs (never key material).
    pub changes: Vec<Change>,
    /// When this plan must be made again (renewal, promotion), at the latest.
    pub due: OffsetDateTime,
}

/// One issuance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A CA was created where none existed.
    CaCreated,
    /// The CA Secret was gone while certificates of the old CA were still in
    /// use: a new CA was made, and the old one stays trusted until it expires.
    CaReplaced,
    /// The current CA entered its renewal window; its successor is now trusted
    /// but issues nothing yet.
    CaStaged,
    /// The staged CA took over issuing; the previous CA stays trusted.
    CaPromoted,
    /// A leaf was issued, with the reason.
    LeafIssued(Leaf, &'static str),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CaCreated => f.write_str("created the cluster CA"),
            Self::CaReplaced => {
                f.write_str("the CA Secret was missing: created a new cluster CA; the previous CA stays trusted")
            }
            Self::CaStaged => f.write_str("staged the next cluster CA: trusted now, issuing after propagation"),
            Self::CaPromoted => {
                f.write_str("promoted the next cluster CA; the previous CA stays trusted until it expires")
            }
            Self::LeafIssued(Leaf::Node(i), why) => write!(f, "issued the certificate of node {i} ({why})"),
            Self::LeafIssued(Leaf::Operator, why) => write!(f, "issued the operator client certificate ({why})"),
        }
    }
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The CA Secret exists but does not hold a usable CA. Replacing it would
    /// cut every node off; a person has to look.
    #[error("CA secret holds no usable CA ({0}); refusing to replace it")]
    CaUnreadable(#[source] torcus_certs::Error),
    /// Issuing failed.
    #[error(transparent)]
    Certs(#[from] torcus_certs::Error),
}

/// Plans the certificates of cluster `namespace/cluster`.
pub fn plan(
    namespace: &str,
    cluster: &str,
    existing: &Existing,
    requests: &BTreeMap<Leaf, LeafRequest>,
    lifetimes: Lifetimes,
    now: OffsetDateTime,
) -> Result<Pki, PlanError> {
    let mut changes = Vec::new();
    let earlier = existing.bundle.as_deref().and_then(|b| TrustBundle::from_pem(b).ok());

    let (mut ca, mut next, mut bundle) = match &existing.ca {
        None => {
            let common_name = format!("torcus {namespace}/{cluster} CA");
            let ca = CertificateAuthority::generate(&common_name, lifetimes.ca_validity(), now)?;
            let bundle = match earlier {
                Some(earlier) => {
                    changes.push(Change::CaReplaced);
                    earlier.rolled(ca.cert_pem(), now)?
                }
                None => {
                    changes.push(Change::CaCreated);
                    TrustBundle::single(ca.cert_pem())
                }
            };
            (ca, None, bundle)
        }
        Some((cert, key)) => {
            let ca = CertificateAuthority::from_pem(cert, key.expose()).map_err(PlanError::CaUnreadable)?;
            // A staged CA that does not parse is simply staged again.
            let next = existing.next.as_ref().and_then(|(cert, key, since)| {
                CertificateAuthority::from_pem(cert, key.expose()).ok().map(|next| (next, *since))
            });
            let bundle = earlier.unwrap_or_else(|| TrustBundle::single(ca.cert_pem()));
            (ca, next, bundle)
        }
    };

    match next.take() {
        Some((staged, since)) if now - since >= lifetimes.propagation => {
            changes.push(Change::CaPromoted);
            ca = staged;
        }
        Some(staged) => next = Some(staged),
        None if torcus_certs::needs_renewal(ca.cert_pem(), lifetimes.ca_renew_before(), now)? => {
            let staged = CertificateAuthority::generate(ca.common_name(), lifetimes.ca_validity(), now)?;
            changes.push(Change::CaStaged);
            next = Some((staged, now));
        }
        None => {}
    }
    // Whatever happened above, the bundle trusts the issuing CA and the
    // staged one, and forgets only CAs that have expired.
    for trusted in std::iter::once(&ca).chain(next.as_ref().map(|(n, _)| n)) {
        if !bundle.contains(trusted.cert_pem()) {
            bundle = bundle.rolled(trusted.cert_pem(), now)?;
        }
    }
    let bundle = bundle.pruned(now);
    let new_issuer = changes.iter().any(|c| matches!(c, Change::CaCreated | Change::CaReplaced | Change::CaPromoted));

    let mut leaves = BTreeMap::new();
    for (&leaf, request) in requests {
        let identity = Identity {
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
            role: match leaf {
                Leaf::Node(party_index) => Role::Node { party_index },
                Leaf::Operator => Role::Operator,
            },
        };
        let reason = match existing.leaves.get(&leaf) {
            _ if new_issuer => Some("new CA"),
            None => Some("new"),
            Some(current) => reissue_reason(current, &ca, &identity, request, lifetimes, now),
        };
        let cert = match reason {
            None => existing.leaves[&leaf].clone(),
            Some(why) => {
                changes.push(Change::LeafIssued(leaf, why));
                ca.issue(&identity, &request.dns_names, &request.ips, lifetimes.leaf_validity, now)?
            }
        };
        leaves.insert(leaf, cert);
    }

    // Next CA step: promote the staged CA, or stage one.
    let mut due = match &next {
        Some((_, since)) => *since + lifetimes.propagation,
        None => ca.not_after() - lifetimes.ca_renew_before(),
    };
    for cert in leaves.values() {
        due = due.min(torcus_certs::inspect(&cert.cert_pem)?.not_after - lifetimes.renew_before);
    }
    Ok(Pki { ca, next, bundle, leaves, changes, due })
}

/// Why a leaf that exists must be issued again, if it must.
fn reissue_reason(
    current: &IssuedCertificate,
    ca: &CertificateAuthority,
    identity: &Identity,
    request: &LeafRequest,
    lifetimes: Lifetimes,
    now: OffsetDateTime,
) -> Option<&'static str> {
    let Ok(info) = torcus_certs::inspect(&current.cert_pem) else {
        return Some("unreadable");
    };
    if torcus_certs::verify_leaf(&current.cert_pem, ca.cert_pem(), now).is_err() {
        return Some("not valid under the current CA");
    }
    if info.identity.as_ref() != Some(identity) {
        return Some("wrong identity");
    }
    if request.dns_names.iter().any(|d| !info.dns_names.contains(d))
        || request.ips.iter().any(|ip| !info.ips.contains(ip))
    {
        return Some("addresses changed");
    }
    match torcus_certs::needs_renewal(&current.cert_pem, lifetimes.renew_before, now) {
        Ok(false) => None,
        _ => Some("renewal"),
    }
}

/// Parses a duration of the form the CRD allows: `([0-9]+(h|m|s))+`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut digits = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' => digits.push(c),
            'h' | 'm' | 's' => {
                let n: i64 = digits.parse().ok()?;
                digits.clear();
                let unit = match c {
                    'h' => Duration::HOUR,
                    'm' => Duration::MINUTE,
                    _ => Duration::SECOND,
                };
                total = total.checked_add(unit.checked_mul(i32::try_from(n).ok()?)?)?;
            }
            _ => return None,
        }
    }
    (digits.is_empty() && !text.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            leaf_validity: Duration::days(90),
            renew_before: Duration::days(30),
            propagation: DEFAULT_PROPAGATION,
        }
    }

    fn requests(n: u16) -> BTreeMap<Leaf, LeafRequest> {
        let mut r: BTreeMap<_, _> = (0..n)
            .map(|i| (Leaf::Node(i), LeafRequest { dns_names: vec![format!("demo-{i}-0.demo-nodes")], ips: vec![] }))
            .collect();
        r.insert(Leaf::Operator, LeafRequest::default());
        r
    }

    fn existing(pki: &Pki) -> Existing {
        Existing {
            ca: Some((pki.ca.cert_pem().to_owned(), pki.ca.key_pem().clone())),
            next: pki.next.as_ref().map(|(n, since)| (n.cert_pem().to_owned(), n.key_pem().clone(), *since)),
            bundle: Some(pki.bundle.to_pem()),
            leaves: pki.leaves.clone(),
        }
    }

    #[test]
    fn first_plan_issues_everything_and_second_changes_nothing() {
        let now = OffsetDateTime::now_utc();
        let first = plan("vault", "demo", &Existing::default(), &requests(3), lifetimes(), now).unwrap();
        assert_eq!(first.changes.len(), 1 + 4);
        for (leaf, cert) in &first.leaves {
            torcus_certs::verify_leaf(&cert.cert_pem, &first.bundle.to_pem(), now).unwrap();
            let info = torcus_certs::inspect(&cert.cert_pem).unwrap();
            let role = info.identity.unwrap().role;
            match leaf {
                Leaf::Node(i) => assert_eq!(role, Role::Node { party_index: *i }),
                Leaf::Operator => assert_eq!(role, Role::Operator),
            }
        }
        let second =
            plan("vault", "demo", &existing(&first), &requests(3), lifetimes(), now + Duration::days(1)).unwrap();
        assert!(second.changes.is_empty(), "{:?}", second.changes);
        assert_eq!(second.leaves[&Leaf::Node(1)].cert_pem, first.leaves[&Leaf::Node(1)].cert_pem);
    }

    #[test]
    fn leaves_renew_inside_the_window() {
        let now = OffsetDateTime::now_utc();
        let first = plan("vault", "demo", &Existing::default(), &requests(2), lifetimes(), now).unwrap();
        let later = now + Duration::days(61);
        let second = plan("vault", "demo", &existing(&first), &requests(2), lifetimes(), later).unwrap();
        assert!(second.changes.contains(&Change::LeafIssued(Leaf::Node(0), "renewal")));
        assert!(!second.changes.contains(&Change::CaStaged));
    }

    #[test]
    fn ca_roll_stages_then_promotes_without_a_hard_cut() {
        let t0 = OffsetDateTime::now_utc();
        let first = plan("vault", "demo", &Existing::default(), &requests(2), lifetimes(), t0).unwrap();
        // CA validity 360 days; the next CA is staged 120 days + propagation before the end.
        let t1 = t0 + Duration::days(235);
        let before = plan("vault", "demo", &existing(&first), &requests(2), lifetimes(), t1).unwrap();
        assert!(before.next.is_none(), "{:?}", before.changes);
        let old_leaf = before.leaves[&Leaf::Node(0)].cert_pem.clone();

        let t2 = t0 + Duration::days(241);
        let staged = plan("vault", "demo", &existing(&before), &requests(2), lifetimes(), t2).unwrap();
        assert!(staged.changes.contains(&Change::CaStaged));
        assert_eq!(staged.bundle.len(), 2, "next CA is trusted");
        assert_eq!(staged.ca.cert_pem(), first.ca.cert_pem(), "the old CA still issues");
        assert!(!staged.changes.iter().any(|c| matches!(c, Change::LeafIssued(..))), "{:?}", staged.changes);
        assert_eq!(staged.due, t2 + DEFAULT_PROPAGATION);

        // Before propagation nothing moves.
        let t3 = t2 + Duration::minutes(1);
        let waiting = plan("vault", "demo", &existing(&staged), &requests(2), lifetimes(), t3).unwrap();
        assert!(waiting.changes.is_empty(), "{:?}", waiting.changes);

        let t4 = t2 + DEFAULT_PROPAGATION;
        let promoted = plan("vault", "demo", &existing(&waiting), &requests(2), lifetimes(), t4).unwrap();
        assert!(promoted.changes.contains(&Change::CaPromoted));
        assert!(promoted.changes.contains(&Change::LeafIssued(Leaf::Node(0), "new CA")));
        assert!(promoted.next.is_none());
        let bundle = promoted.bundle.to_pem();
        assert_eq!(promoted.bundle.len(), 2);
        // At the same instant, a node still holding the old CA's leaf and one
        // holding the new CA's leaf both verify under the bundle both have.
        torcus_certs::verify_leaf(&old_leaf, &bundle, t4).unwrap();
        torcus_certs::verify_leaf(&promoted.leaves[&Leaf::Node(0)].cert_pem, &bundle, t4).unwrap();
        // ... and the bundle nodes had during staging already trusted the new leaf.
        torcus_certs::verify_leaf(&promoted.leaves[&Leaf::Node(1)].cert_pem, &staged.bundle.to_pem(), t4).unwrap();
    }

    #[test]
    fn a_lost_ca_secret_keeps_the_old_ca_trusted() {
        let now = OffsetDateTime::now_utc();
        let first = plan("vault", "demo", &Existing::default(), &requests(2), lifetimes(), now).unwrap();
        let mut lost = existing(&first);
        lost.ca = None;
        let replaced = plan("vault", "demo", &lost, &requests(2), lifetimes(), now).unwrap();
        assert!(replaced.changes.contains(&Change::CaReplaced));
        torcus_certs::verify_leaf(&first.leaves[&Leaf::Node(0)].cert_pem, &replaced.bundle.to_pem(), now).unwrap();
        torcus_certs::verify_leaf(&replaced.leaves[&Leaf::Node(0)].cert_pem, &replaced.bundle.to_pem(), now).unwrap();
    }

    #[test]
    fn an_unreadable_ca_is_not_replaced() {
        let now = OffsetDateTime::now_utc();
        let broken = Existing { ca: Some(("garbage".into(), SecretPem::new("garbage".into()))), ..Existing::default() };
        assert!(matches!(
            plan("vault", "demo", &broken, &requests(1), lifetimes(), now),
            Err(PlanError::CaUnreadable(_))
        ));
    }

    #[test]
    fn a_new_pod_ip_reissues_only_that_node() {
        let now = OffsetDateTime::now_utc();
        let first = plan("vault", "demo", &Existing::default(), &requests(3), lifetimes(), now).unwrap();
        let mut req = requests(3);
        req.get_mut(&Leaf::Node(2)).unwrap().ips.push("127.0.0.12".parse().unwrap());
        let second = plan("vault", "demo", &existing(&first), &req, lifetimes(), now).unwrap();
        assert_eq!(second.changes, vec![Change::LeafIssued(Leaf::Node(2), "addresses changed")]);
        let info = torcus_certs::inspect(&second.leaves[&Leaf::Node(2)].cert_pem).unwrap();
        assert!(info.ips.contains(&"127.0.0.12".parse().unwrap()));
    }

    #[test]
    fn a_certificate_from_a_foreign_ca_is_replaced() {
        let now = OffsetDateTime::now_utc();
        let first = plan("vault", "demo", &Existing::default(), &requests(1), lifetimes(), now).unwrap();
        let other = plan("vault", "demo", &Existing::default(), &requests(1), lifetimes(), now).unwrap();
        let mut mixed = existing(&first);
        mixed.leaves.insert(Leaf::Node(0), other.leaves[&Leaf::Node(0)].clone());
        let second = plan("vault", "demo", &mixed, &requests(1), lifetimes(), now).unwrap();
        assert_eq!(second.changes, vec![Change::LeafIssued(Leaf::Node(0), "not valid under the current CA")]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2160h"), Some(Duration::hours(2160)));
        assert_eq!(parse_duration("1h30m5s"), Some(Duration::seconds(5405)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("12"), None);
        assert_eq!(parse_duration("3d"), None);
        assert_eq!(parse_duration("99999999999h"), None);
    }
}
