//! The cluster configuration a node reads at start-up (`cluster.json` in the
//! cluster's ConfigMap), and where the pod template puts things.

use serde::{Deserialize, Serialize};

/// File name of the configuration inside the ConfigMap and its mount.
pub const CONFIG_FILE: &str = "cluster.json";
/// Where the pod template mounts the ConfigMap.
pub const CONFIG_DIR: &str = "/etc/torcus/config";
/// Where the pod template mounts the node's TLS Secret (`tls.crt`, `tls.key`, `ca.crt`).
pub const TLS_DIR: &str = "/etc/torcus/tls";
/// Where the pod template mounts the node's persistent volume.
pub const DATA_DIR: &str = "/var/lib/torcus";
/// The node API's port (mutual TLS; the operator is its only client).
pub const HTTP_PORT: u16 = 8080;
/// The node's plain HTTP port: `/metrics`, `/healthz`, `/readyz`.
pub const METRICS_PORT: u16 = 9090;
/// Peer-to-peer port: UDP for QUIC, TCP for the TCP transport.
pub const P2P_PORT: u16 = 7443;

/// Environment variable carrying the node's party index.
pub const ENV_PARTY_INDEX: &str = "TORCUS_PARTY_INDEX";
/// Environment variable carrying the configuration file path.
pub const ENV_CONFIG: &str = "TORCUS_CONFIG";
/// Environment variable carrying the TLS directory.
pub const ENV_TLS_DIR: &str = "TORCUS_TLS_DIR";
/// Environment variable carrying the data directory.
pub const ENV_DATA_DIR: &str = "TORCUS_DATA_DIR";
/// Environment variable carrying the pod IP (downward API).
pub const ENV_POD_IP: &str = "POD_IP";

/// A cluster as its nodes see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// MpcCluster name.
    pub cluster: String,
    /// MpcCluster namespace.
    pub namespace: String,
    /// Number of parties.
    pub nodes: u16,
    /// Parties needed to sign.
    pub threshold: u16,
    /// Curve name, `secp256k1`.
    pub curve: String,
    /// Transport mode: `quic`, `tcp`, `http` or `hybrid`. Every mode but
    /// `quic` seals protocol messages end to end with the peers' `sealKey`s.
    pub transport: String,
    /// Key names to generate.
    pub keys: Vec<String>,
    /// Hex Ed25519 public key that verifies the operator's grants.
    pub grant_public_key: String,
    /// Presignatures to keep per key, derivation path and signer set.
    pub presignature_pool_size: u16,
    /// The derivation paths (non-hardened indices; empty: the key itself)
    /// whose presignatures nodes keep, per key. A presignature is bound to
    /// its path before it is made; a request for any other path runs the
    /// full protocol.
    #[serde(default = "root_only")]
    pub presignature_paths: Vec<Vec<u32>>,
    /// Operator registry/relay base URL, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_url: Option<String>,
    /// How to reach each party, in index order.
    pub peers: Vec<Peer>,
}

/// How to reach one party.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Party index, 0-based.
    pub index: u16,
    /// Stable DNS name of the party's pod; also the TLS server name.
    pub host: String,
    /// Peer-to-peer port.
    pub p2p_port: u16,
    /// HTTP API port.
    pub http_port: u16,
    /// Hex Ed25519 public key that signs the party's TCP frames (TCP mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_key: Option<String>,
    /// Hex X25519 public key to which protocol messages for the party are
    /// sealed end to end; required in every transport mode but `quic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_key: Option<String>,
    /// [`store_key_check`] of the key the party's shares are sealed under:
    /// a node whose store key is another (its keys Secret changed after the
    /// operator read it, or a stale mount) does not start on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_key_check: Option<String>,
}

/// A public check value of a store key: hex SHA-256 over a fixed label and
/// the key. The key is 32 random bytes, so the value reveals nothing of it;
/// it tells only whether two keys are the same.
pub fn store_key_check(key: &[u8; 32]) -> String {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    digest.update(b"torcus store key check v1\0");
    digest.update(key);
    hex::encode(digest.finalize())
}

/// Most derivation paths a cluster keeps presignatures for: every path
/// multiplies the pools each node fills and holds in memory.
pub const MAX_PRESIGNATURE_PATHS: usize = 8;

fn root_only() -> Vec<Vec<u32>> {
    vec![Vec::new()]
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid JSON of the expected shape.
    #[error("cluster configuration is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The numbers do not describe a valid cluster.
    #[error("cluster configuration is inconsistent: {0}")]
    Inconsistent(String),
}

impl ClusterConfig {
    /// Parses and checks a configuration.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        let config: Self = serde_json::from_slice(json)?;
        config.check()?;
        Ok(config)
    }

    /// Checks the invariants a node relies on.
    pub fn check(&self) -> Result<(), ConfigError> {
        let inconsistent = |m: String| Err(ConfigError::Inconsistent(m));
        if self.threshold < 2 || self.threshold > self.nodes {
            return inconsistent(format!("threshold {} is not within 2..={}", self.threshold, self.nodes));
        }
        if self.peers.len() != usize::from(self.nodes) {
            return inconsistent(format!("{} peers listed for {} nodes", self.peers.len(), self.nodes));
        }
        if let Some((i, p)) = self.peers.iter().enumerate().find(|(i, p)| usize::from(p.index) != *i) {
            return inconsistent(format!("peer at position {i} has index {}", p.index));
        }
        if self.presignature_paths.len() > MAX_PRESIGNATURE_PATHS {
            return inconsistent(format!(
                "{} presignature paths, at most {MAX_PRESIGNATURE_PATHS}",
                self.presignature_paths.len()
            ));
        }
        for (i, path) in self.presignature_paths.iter().enumerate() {
            if path.len() > crate::MAX_DERIVATION_DEPTH || path.iter().any(|index| *index >= crate::HARDENED_INDEX) {
                return inconsistent(format!("presignature path {i} is not a non-hardened path"));
            }
            if self.presignature_paths[..i].contains(path) {
                return inconsistent(format!("presignature path {i} is listed twice"));
            }
        }
        let sealed = matches!(self.transport.as_str(), "tcp" | "http" | "hybrid");
        for p in &self.peers {
            match p.seal_key.as_deref() {
                Some(key) if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) => {}
                Some(_) => return inconsistent(format!("sealKey of party {} is not 64 hexadecimal digits", p.index)),
                None if sealed => {
                    return inconsistent(format!(
                        "transport {} seals messages end to end, but party {} has no sealKey",
                        self.transport, p.index
                    ));
                }
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "test-util"))]
impl ClusterConfig {
    /// A consistent configuration of `nodes` parties for tests.
    pub fn sample(cluster: &str, namespace: &str, nodes: u16, threshold: u16) -> Self {
        Self {
            cluster: cluster.into(),
            namespace: namespace.into(),
            nodes,
            threshold,
            curve: "secp256k1".into(),
            transport: "quic".into(),
            keys: vec!["default".into()],
            grant_public_key: "00".repeat(32),
            presignature_pool_size: 4,
            presignature_paths: root_only(),
            registry_url: None,
            peers: (0..nodes)
                .map(|index| Peer {
                    index,
                    host: format!("{cluster}-{index}-0.{cluster}-nodes"),
                    p2p_port: P2P_PORT,
                    http_port: HTTP_PORT,
                    identity_key: None,
                    seal_key: None,
                    store_key_check: None,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks() {
        let c = ClusterConfig::sample("demo", "default", 3, 2);
        let json = serde_json::to_vec(&c).unwrap();
        assert_eq!(ClusterConfig::from_json(&json).unwrap(), c);
    }

    #[test]
    fn refuses_inconsistent() {
        let mut c = ClusterConfig::sample("demo", "default", 3, 2);
        c.threshold = 4;
        assert!(matches!(c.check(), Err(ConfigError::Inconsistent(m)) if m.contains("threshold")));
        let mut c = ClusterConfig::sample("demo", "default", 3, 2);
        c.peers.swap(0, 1);
        assert!(c.check().is_err());
        assert!(ClusterConfig::from_json(b"{not json").is_err());
        let mut c = ClusterConfig::sample("demo", "default", 3, 2);
        c.presignature_paths = vec![vec![0, 1 << 31]];
        assert!(matches!(c.check(), Err(ConfigError::Inconsistent(m)) if m.contains("non-hardened")));
        c.presignature_paths = vec![vec![], vec![]];
        assert!(matches!(c.check(), Err(ConfigError::Inconsistent(m)) if m.contains("twice")));
        c.presignature_paths = (0..9).map(|i| vec![i]).collect();
        assert!(matches!(c.check(), Err(ConfigError::Inconsistent(m)) if m.contains("at most")));
    }

    #[test]
    fn presignature_paths_default_to_the_root() {
        let mut value = serde_json::to_value(ClusterConfig::sample("demo", "default", 3, 2)).unwrap();
        value.as_object_mut().unwrap().remove("presignaturePaths");
        let c: ClusterConfig = serde_json::from_value(value).unwrap();
        assert_eq!(c.presignature_paths, vec![Vec::<u32>::new()]);
    }

    #[test]
    fn every_mode_but_quic_needs_a_seal_key_per_peer() {
        let mut c = ClusterConfig::sample("demo", "default", 3, 2);
        c.check().unwrap();
        for mode in ["tcp", "http", "hybrid"] {
            c.transport = mode.into();
            assert!(matches!(c.check(), Err(ConfigError::Inconsistent(m)) if m.contains("sealKey")), "{mode}");
        }
        for p in &mut c.peers {
            p.seal_key = Some(format!("{:064x}", p.index + 9));
        }
        c.check().unwrap();
        let json = String::from_utf8(serde_json::to_vec(&c).unwrap()).unwrap();
        assert!(json.contains(r#""sealKey":"#), "{json}");
        c.peers[1].seal_key = Some("xy".repeat(32));
        assert!(matches!(c.check(), Err(ConfigError::Inconsistent(m)) if m.contains("party 1")));
        c.transport = "quic".into();
        assert!(c.check().is_err(), "a malformed key is refused in any mode");
    }
}
