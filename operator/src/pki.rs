//! Deciding which certificates a cluster needs: given what its Secrets hold
//! now, keep what is still good and issue what is missing, wrong or close to
//! expiry. Pure (time goes in as an argument), so renewal and CA rolls are
//! tested without a cluster.
//!
//! A CA roll never cuts trust hard: the new CA signs every leaf from then on,
//! and the trust bundle every node and the operator use holds old and new CA
//! until the old one expires.

use std::collections::BTreeMap;
use std::net::IpAddr;

use torcus_certs::{
    CaRenewal, CertificateAuthority, Duration, Identity, IssuedCertificate, OffsetDateTime, Role, SecretPem,
    TrustBundle,
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
}

impl Lifetimes {
    /// The CA outlives four leaves.
    pub fn ca_validity(&self) -> Duration {
        self.leaf_validity * 4
    }

    /// Roll the CA early enough that a leaf issued just before the roll still
    /// gets its full validity.
    pub fn ca_renew_before(&self) -> Duration {
        self.leaf_validity + self.renew_before
    }
}

/// What the cluster's Secrets hold now (PEM text), as far as they exist.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    /// CA certificate and key.
    pub ca: Option<(String, SecretPem)>,
    /// Trust bundle from the CA Secret.
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
    /// The current CA.
    pub ca: CertificateAuthority,
    /// The CAs everyone trusts, current first.
    pub bundle: TrustBundle,
    /// Every leaf.
    pub leaves: BTreeMap<Leaf, IssuedCertificate>,
    /// What was issued, for Events and logs (never key material).
    pub changes: Vec<Change>,
}

/// One issuance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A CA was created where none existed.
    CaCreated,
    /// The CA entered its renewal window and was replaced; the old one stays trusted.
    CaRolled,
    /// A leaf was issued, with the reason.
    LeafIssued(Leaf, &'static str),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CaCreated => f.write_str("created the cluster CA"),
            Self::CaRolled => f.write_str("rolled the cluster CA; the previous CA stays trusted until it expires"),
            Self::LeafIssued(Leaf::Node(i), why) => write!(f, "issued the certificate of node {i} ({why})"),
            Self::LeafIssued(Leaf::Operator, why) => write!(f, "issued the operator client certificate ({why})"),
        }
    }
}

/// Plans the certificates of cluster `namespace/cluster`.
pub fn plan(
    namespace: &str,
    cluster: &str,
    existing: &Existing,
    requests: &BTreeMap<Leaf, LeafRequest>,
    lifetimes: Lifetimes,
    now: OffsetDateTime,
) -> torcus_certs::Result<Pki> {
    let mut changes = Vec::new();
    let common_name = format!("torcus {namespace}/{cluster} CA");

    let current = existing.ca.as_ref().and_then(|(cert, key)| CertificateAuthority::from_pem(cert, key.expose()).ok());
    let (ca, bundle) = match current {
        None => {
            changes.push(Change::CaCreated);
            let ca = CertificateAuthority::generate(&common_name, lifetimes.ca_validity(), now)?;
            let bundle = TrustBundle::single(ca.cert_pem());
            (ca, bundle)
        }
        Some(ca) => {
            let bundle = existing
                .bundle
                .as_deref()
                .and_then(|b| TrustBundle::from_pem(b).ok())
                .filter(|b| b.to_pem().contains(ca.cert_pem().trim()))
                .unwrap_or_else(|| TrustBundle::single(ca.cert_pem()));
            match torcus_certs::renew_ca(&ca, &bundle, lifetimes.ca_validity(), lifetimes.ca_renew_before(), now)? {
                CaRenewal::Keep => (ca, bundle.pruned(now)),
                CaRenewal::Renewed { ca, bundle } => {
                    changes.push(Change::CaRolled);
                    (ca, bundle)
                }
            }
        }
    };
    let ca_changed = !changes.is_empty();

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
            _ if ca_changed => Some("new CA"),
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
    Ok(Pki { ca, bundle, leaves, changes })
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
        Lifetimes { leaf_validity: Duration::days(90), renew_before: Duration::days(30) }
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
        assert!(!second.changes.contains(&Change::CaRolled));
    }

    #[test]
    fn ca_roll_keeps_the_old_ca_trusted() {
        let now = OffsetDateTime::now_utc();
        let first = plan("vault", "demo", &Existing::default(), &requests(2), lifetimes(), now).unwrap();
        // CA validity 360 days, rolled 120 days before its end.
        let later = now + Duration::days(250);
        let rolled = plan("vault", "demo", &existing(&first), &requests(2), lifetimes(), later).unwrap();
        assert!(rolled.changes.contains(&Change::CaRolled));
        assert_eq!(rolled.bundle.len(), 2);
        let bundle = rolled.bundle.to_pem();
        // A node that has not picked up its new certificate yet is still trusted.
        torcus_certs::verify_leaf(&first.leaves[&Leaf::Node(0)].cert_pem, &bundle, later - Duration::days(170))
            .unwrap();
        torcus_certs::verify_leaf(&rolled.leaves[&Leaf::Node(0)].cert_pem, &bundle, later).unwrap();
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
