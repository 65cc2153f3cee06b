//! A node's identity: the cluster configuration plus a TLS certificate that
//! the cluster CA issued for exactly this party of exactly this cluster.

use std::path::Path;

use torcus_certs::{OffsetDateTime, Role};
use torcus_contract::{ClusterConfig, ConfigError};

/// Configuration and certificate that belong together.
#[derive(Debug)]
pub struct Identity {
    /// This node's party index.
    pub party_index: u16,
    /// The cluster configuration.
    pub config: ClusterConfig,
}

/// Why a node cannot take part yet.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is malformed or inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate is not valid under the cluster CA.
    #[error("certificate: {0}")]
    Certificate(#[from] torcus_certs::Error),
    /// The certificate is valid but names another party or cluster.
    #[error("certificate is for {found}, expected party {party_index} of {namespace}/{cluster}")]
    WrongIdentity {
        /// What the certificate says.
        found: String,
        /// Expected party.
        party_index: u16,
        /// Expected namespace.
        namespace: String,
        /// Expected cluster.
        cluster: String,
    },
    /// The party index is outside the cluster.
    #[error("party index {0} is not in a cluster of {1} nodes")]
    NoSuchParty(u16, u16),
}

impl Identity {
    /// Loads and cross-checks configuration and certificate.
    pub fn load(party_index: u16, config: &Path, tls_dir: &Path) -> Result<Self, IdentityError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| IdentityError::Read { path: path.display().to_string(), source })
        };
        let config = ClusterConfig::from_json(&read(config)?)?;
        if party_index >= config.nodes {
            return Err(IdentityError::NoSuchParty(party_index, config.nodes));
        }
        let cert = String::from_utf8_lossy(&read(&tls_dir.join("tls.crt"))?).into_owned();
        let bundle = String::from_utf8_lossy(&read(&tls_dir.join("ca.crt"))?).into_owned();
        // The key must be readable too, though this skeleton does not use it yet.
        read(&tls_dir.join("tls.key"))?;
        torcus_certs::verify_leaf(&cert, &bundle, OffsetDateTime::now_utc())?;
        let found = torcus_certs::inspect(&cert)?.identity;
        let expected = torcus_certs::Identity {
            namespace: config.namespace.clone(),
            cluster: config.cluster.clone(),
            role: Role::Node { party_index },
        };
        if found.as_ref() != Some(&expected) {
            return Err(IdentityError::WrongIdentity {
                found: found.map(|i| i.uri()).unwrap_or_else(|| "no torcus identity".into()),
                party_index,
                namespace: config.namespace,
                cluster: config.cluster,
            });
        }
        Ok(Self { party_index, config })
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use torcus_certs::{CertificateAuthority, Duration};

    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    /// Writes `cluster.json` for a 3-node cluster and a TLS folder holding a
    /// certificate issued by `ca` for `role`.
    fn files(ca: &CertificateAuthority, trusted: &CertificateAuthority, role: Role) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let config = ClusterConfig::sample("demo", "vault", 3, 2);
        std::fs::write(dir.path().join("cluster.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        let identity = torcus_certs::Identity { namespace: "vault".into(), cluster: "demo".into(), role };
        let ips: [IpAddr; 0] = [];
        let cert = ca.issue(&identity, &["n0".into()], &ips, Duration::hours(1), OffsetDateTime::now_utc()).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &cert.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), cert.key_pem.expose()).unwrap();
        std::fs::write(dir.path().join("ca.crt"), trusted.cert_pem()).unwrap();
        Files { dir }
    }

    fn load(f: &Files, party: u16) -> Result<Identity, IdentityError> {
        Identity::load(party, &f.dir.path().join("cluster.json"), f.dir.path())
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("test CA", Duration::days(1), OffsetDateTime::now_utc()).unwrap()
    }

    #[test]
    fn accepts_its_own_certificate() {
        let ca = ca();
        let f = files(&ca, &ca, Role::Node { party_index: 1 });
        let identity = load(&f, 1).unwrap();
        assert_eq!(identity.party_index, 1);
        assert_eq!(identity.config.cluster, "demo");
    }

    #[test]
    fn refuses_another_partys_certificate() {
        let ca = ca();
        let f = files(&ca, &ca, Role::Node { party_index: 2 });
        assert!(matches!(load(&f, 1), Err(IdentityError::WrongIdentity { .. })));
        let f = files(&ca, &ca, Role::Operator);
        assert!(matches!(load(&f, 0), Err(IdentityError::WrongIdentity { .. })));
    }

    #[test]
    fn refuses_a_certificate_from_another_ca() {
        let f = files(&ca(), &ca(), Role::Node { party_index: 0 });
        assert!(matches!(load(&f, 0), Err(IdentityError::Certificate(_))));
    }

    #[test]
    fn refuses_an_index_outside_the_cluster_and_missing_files() {
        let ca = ca();
        let f = files(&ca, &ca, Role::Node { party_index: 0 });
        assert!(matches!(load(&f, 3), Err(IdentityError::NoSuchParty(3, 3))));
        std::fs::remove_file(f.dir.path().join("tls.key")).unwrap();
        assert!(matches!(load(&f, 0), Err(IdentityError::Read { .. })));
    }
}
