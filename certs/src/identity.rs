//! Who a certificate belongs to, and its encoding as a SPIFFE-style URI SAN.
//!
//! The URI is the only name a peer is authorized by: DNS and IP SANs exist so that
//! ordinary TLS server-name checks pass, but the party index comes from here.

use crate::{Error, Result};

/// The URI prefix shared by every Torcus identity (scheme and trust domain).
const PREFIX: &str = "spiffe://torcus.io/";

/// Who a leaf certificate belongs to. Encoded in the certificate as a URI SAN
/// `spiffe://torcus.io/ns/<namespace>/mpccluster/<cluster>/party/<index>` for a node, or
/// `spiffe://torcus.io/ns/<namespace>/mpccluster/<cluster>/operator` for the operator client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Kubernetes namespace of the `MpcCluster`.
    pub namespace: String,
    /// Name of the `MpcCluster`.
    pub cluster: String,
    /// What the holder is within the cluster.
    pub role: Role,
}

/// What the holder of a certificate is within its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An MPC node holding the key share of party `party_index`.
    Node {
        /// Index of the party in the signing protocol.
        party_index: u16,
    },
    /// The operator, a client only.
    Operator,
}

impl Identity {
    /// The identity as a URI, as found in the certificate's URI SAN.
    pub fn uri(&self) -> String {
        let Self { namespace, cluster, role } = self;
        match role {
            Role::Node { party_index } => {
                format!("{PREFIX}ns/{namespace}/mpccluster/{cluster}/party/{party_index}")
            }
            Role::Operator => format!("{PREFIX}ns/{namespace}/mpccluster/{cluster}/operator"),
        }
    }

    /// Parses a URI produced by [`Identity::uri`].
    ///
    /// Strict: the namespace must be a DNS label, the cluster name a DNS subdomain, and the
    /// party index a canonical decimal `u16`, so that `from_uri(uri)?.uri() == uri`.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let invalid = || Error::InvalidIdentity(uri.to_owned());
        let path = uri.strip_prefix(PREFIX).ok_or_else(invalid)?;
        let segments: Vec<&str> = path.split('/').collect();
        let (namespace, cluster, role) = match segments[..] {
            ["ns", namespace, "mpccluster", cluster, "party", index] => {
                let party_index = parse_index(index).ok_or_else(invalid)?;
                (namespace, cluster, Role::Node { party_index })
            }
            ["ns", namespace, "mpccluster", cluster, "operator"] => (namespace, cluster, Role::Operator),
            _ => return Err(invalid()),
        };
        if !is_dns_label(namespace) || !is_dns_subdomain(cluster) {
            return Err(invalid());
        }
        Ok(Self { namespace: namespace.to_owned(), cluster: cluster.to_owned(), role })
    }

    /// A short readable name for the certificate's subject CN, e.g. `party-2.demo.default`.
    pub(crate) fn common_name(&self) -> String {
        let Self { namespace, cluster, role } = self;
        match role {
            Role::Node { party_index } => format!("party-{party_index}.{cluster}.{namespace}"),
            Role::Operator => format!("operator.{cluster}.{namespace}"),
        }
    }
}

/// A decimal `u16` without sign or leading zeros (`u16::from_str` accepts `+1` and `01`).
fn parse_index(s: &str) -> Option<u16> {
    let canonical = s == "0" || (!s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()));
    canonical.then(|| s.parse().ok()).flatten()
}

/// An RFC 1123 label, as Kubernetes requires of namespace names.
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// An RFC 1123 subdomain, as Kubernetes requires of most object names.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(party_index: u16) -> Identity {
        Identity { namespace: "default".into(), cluster: "demo".into(), role: Role::Node { party_index } }
    }

    #[test]
    fn uri_round_trips() {
        for id in [
            node(0),
            node(2),
            node(u16::MAX),
            Identity { namespace: "torcus-system".into(), cluster: "prod.eu-1".into(), role: Role::Operator },
        ] {
            assert_eq!(Identity::from_uri(&id.uri()).unwrap(), id);
        }
        assert_eq!(node(2).uri(), "spiffe://torcus.io/ns/default/mpccluster/demo/party/2");
        assert_eq!(node(2).common_name(), "party-2.demo.default");
    }

    #[test]
    fn from_uri_rejects_malformed() {
        for uri in [
            "",
            "spiffe://torcus.io/",
            // wrong scheme or trust domain
            "https://torcus.io/ns/default/mpccluster/demo/party/2",
            "spiffe://example.org/ns/default/mpccluster/demo/party/2",
            "SPIFFE://torcus.io/ns/default/mpccluster/demo/party/2",
            // bad index
            "spiffe://torcus.io/ns/default/mpccluster/demo/party/two",
            "spiffe://torcus.io/ns/default/mpccluster/demo/party/-1",
            "spiffe://torcus.io/ns/default/mpccluster/demo/party/+1",
            "spiffe://torcus.io/ns/default/mpccluster/demo/party/01",
            "spiffe://torcus.io/ns/default/mpccluster/demo/party/65536",
            "spiffe://torcus.io/ns/default/mpccluster/demo/party/",
            // extra, missing or misnamed segments
            "spiffe://torcus.io/ns/default/mpccluster/demo/party/2/extra",
            "spiffe://torcus.io/ns/default/mpccluster/demo/party/2/",
            "spiffe://torcus.io/ns/default/mpccluster/demo/operator/",
            "spiffe://torcus.io/ns/default/mpccluster/demo/party",
            "spiffe://torcus.io/ns/default/mpccluster/demo",
            "spiffe://torcus.io/ns/default/cluster/demo/party/2",
            "spiffe://torcus.io//ns/default/mpccluster/demo/party/2",
            // names Kubernetes would not accept
            "spiffe://torcus.io/ns//mpccluster/demo/party/2",
            "spiffe://torcus.io/ns/Default/mpccluster/demo/party/2",
            "spiffe://torcus.io/ns/a.b/mpccluster/demo/party/2",
            "spiffe://torcus.io/ns/default/mpccluster/-demo/party/2",
            "spiffe://torcus.io/ns/default/mpccluster/de..mo/party/2",
            "spiffe://torcus.io/ns/default/mpccluster/demo?x/party/2",
        ] {
            assert!(matches!(Identity::from_uri(uri), Err(Error::InvalidIdentity(u)) if u == uri), "accepted {uri:?}");
        }
    }
}
