//! Why a reconcile failed.

use crate::pki;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    /// A certificate could not be issued or parsed.
    #[error("certificates: {0}")]
    Certs(#[from] torcus_certs::Error),
    /// The object's spec cannot be acted on; its status says why.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The certificates cannot be planned (an unreadable CA is never replaced).
    #[error("certificates: {0}")]
    Pki(#[from] pki::PlanError),
    /// The grant key Secret exists but does not hold a consistent key.
    #[error("grant key secret {0} is malformed; refusing to replace it")]
    GrantKey(String),
    /// A node keys Secret exists but does not hold well-formed keys.
    #[error("node keys secret {0} is malformed; refusing to replace it")]
    NodeKeys(String),
    /// The operating system's random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// A Secret the operator would use exists, but not as one it made for
    /// this MpcCluster: it is never used (its key could be anyone's).
    #[error(
        "Secret {0} was not made by the operator for this MpcCluster (it has no controller owner reference to it); \
         refusing to use it: delete it and the operator makes its own"
    )]
    ForeignSecret(String),
}

impl Error {
    /// Low-cardinality label for the error counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Certs(_) | Self::Pki(_) => "certs",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::GrantKey(_) => "grant_key",
            Self::NodeKeys(_) => "node_keys",
            Self::Random(_) => "random",
            Self::ForeignSecret(_) => "foreign_secret",
        }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
