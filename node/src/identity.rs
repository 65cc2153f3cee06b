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
