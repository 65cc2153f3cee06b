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
    /// `source`, in the named step of a reconcile (see [`STEPS`]).
    #[error("{step}: {source}")]
    At {
        /// The step that failed.
        step: &'static str,
        /// What failed in it.
        source: Box<Error>,
    },
}

/// The steps of a reconcile, as `torcus_reconcile_errors_total{step}` names
/// them: for an MpcCluster, what it reads (`observe`), its certificates,
/// its grant and node keys, the children it applies, and its keygens and
/// status; for a SigningRequest, a new request (`decide`) or one whose
/// grant is out (`resume`).
pub const STEPS: [(&str, &[&str]); 2] = [
    ("mpccluster", &["observe", "certificates", "keys", "children", "retained", "status"]),
    ("signingrequest", &["decide", "resume"]),
];

impl Error {
    /// This error as having happened in `step`.
    pub fn at(step: &'static str) -> impl FnOnce(Error) -> Error {
        move |source| match source {
            already @ Error::At { .. } => already,
            source => Error::At { step, source: Box::new(source) },
        }
    }

    /// What failed, without the step it failed in.
    pub fn cause(&self) -> &Error {
        match self {
            Self::At { source, .. } => source.cause(),
            other => other,
        }
    }

    /// The step of the reconcile that failed, or `unknown`.
    pub fn step(&self) -> &'static str {
        match self {
            Self::At { step, .. } => step,
            _ => "unknown",
        }
    }

    /// Low-cardinality label for the error counter: the kind of what failed.
    pub fn metric_label(&self) -> &'static str {
        match self.cause() {
            Self::At { .. } => "unknown",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_its_kind_and_names_its_step() {
        let failed = Error::at("keys")(Error::GrantKey("demo-grant-key".into()));
        assert_eq!((failed.step(), failed.metric_label()), ("keys", "grant_key"));
        assert!(matches!(failed.cause(), Error::GrantKey(name) if name == "demo-grant-key"));
        assert!(failed.to_string().starts_with("keys: grant key secret demo-grant-key"), "{failed}");
        // The innermost step is the one that failed.
        let again = Error::at("status")(failed);
        assert_eq!(again.step(), "keys");
        let bare = Error::InvalidSpec("n < t".into());
        assert_eq!((bare.step(), bare.metric_label()), ("unknown", "invalid_spec"));
        for (_, steps) in STEPS {
            assert!(!steps.is_empty() && !steps.contains(&"unknown"));
        }
    }
}
