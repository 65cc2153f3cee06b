//! Why a session could not run or finish, and whom that blames.

use std::time::Duration;

use torcus_contract::GrantError;

use super::PREEMPTED;
use crate::engine;

/// Why a session could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The grant was refused.
    #[error("grant refused: {0}")]
    Grant(#[from] GrantError),
    /// Another participant is the initiator of this grant.
    #[error("party {initiator} is the initiator of this grant")]
    NotInitiator {
        /// Who to ask instead.
        initiator: u16,
    },
    /// The key is not held here.
    #[error("no key named {0:?}")]
    UnknownKey(String),
    /// The key is held here under another scheme than the grant's.
    #[error("key {key:?} is a {held} key, not {wanted}")]
    WrongScheme {
        /// The key.
        key: String,
        /// Its scheme here.
        held: torcus_contract::Scheme,
        /// The grant's.
        wanted: torcus_contract::Scheme,
    },
    /// The key exists already; keys are never generated twice.
    #[error("key {0:?} exists already")]
    KeyExists(String),
    /// The keygen grant names aux info this node does not hold.
    #[error("does not hold aux info {0}")]
    NoSuchAux(String),
    /// The session was aborted here (handshake timeout, a check of this
    /// node's own).
    #[error("session aborted: {0}")]
    Aborted(String),
    /// A participant sent an Abort.
    #[error("session aborted: party {party}: {reason}")]
    AbortedBy {
        /// Who sent it.
        party: u16,
        /// Its reason.
        reason: String,
        /// Whom it held responsible, if anyone.
        accused: Option<u16>,
    },
    /// A participant sent a protocol message that does not decode, or a
    /// second message for a round.
    #[error("{reason}")]
    Misbehaved {
        /// The participant.
        party: u16,
        /// What it sent.
        reason: String,
    },
    /// A participant sent nothing more while the others moved on.
    #[error("{reason}")]
    Silent {
        /// The participant.
        party: u16,
        /// How far it got.
        reason: String,
    },
    /// The protocol failed.
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// The protocol did not finish in time.
    #[error("session timed out after {0:?}")]
    Timeout(Duration),
    /// A message could not be sent to a participant (it is down, or it
    /// stopped reading): the session cannot finish.
    #[error("party {party} could not be sent to: {reason}")]
    Unreachable {
        /// The participant.
        party: u16,
        /// Why.
        reason: String,
    },
    /// A presigning session gave way to a grant session on this node.
    #[error("{PREEMPTED}")]
    Preempted,
    /// The share store failed.
    #[error("share store: {0}")]
    Store(#[from] crate::store::Error),
    /// A stored share could not be read back.
    #[error("stored share is unreadable: {0}")]
    Corrupt(String),
    /// A stored key share is of another format (an older release's): the
    /// node refuses to start rather than reinterpret it.
    #[error("stored key share {name:?}: {error}")]
    ShareFormat {
        /// Name of the share in the store.
        name: String,
        /// What it is, and what to do.
        #[source]
        error: engine::ShareFormatError,
    },
}

/// Who a node holds responsible for a failed session ([`SessionError::fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The participant held responsible.
    pub party: u16,
    /// Who accused it, when not the reporting node itself.
    pub accuser: Option<u16>,
}

impl SessionError {
    /// Who broke a failed session, as far as this node can tell: a
    /// participant it could not send to, one whose message did not decode,
    /// repeated a round or failed the library's checks, one that fell
    /// silent, or the one an Abort named
    /// (then the Abort's sender is the accuser). An Abort that names nobody
    /// puts its sender and this node at odds. Either side of an accusation
    /// may be the liar, so the issuer keeps the two apart rather than
    /// excluding one.
    pub fn fault(&self) -> Option<Fault> {
        let party = match self {
            Self::Unreachable { party, .. } | Self::Misbehaved { party, .. } | Self::Silent { party, .. } => *party,
            Self::Engine(engine::EngineError::BadPartial(party) | engine::EngineError::Blamed { party, .. }) => *party,
            // A sender naming itself names nobody.
            Self::AbortedBy { party, accused: Some(accused), .. } if accused != party => {
                return Some(Fault { party: *accused, accuser: Some(*party) });
            }
            Self::AbortedBy { party, .. } => *party,
            _ => return None,
        };
        Some(Fault { party, accuser: None })
    }

    pub(super) fn is_abort(&self) -> bool {
        matches!(self, Self::Aborted(_) | Self::AbortedBy { .. })
    }

    /// Low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Grant(e) => e.reason(),
            Self::NotInitiator { .. } => "not_initiator",
            Self::UnknownKey(_) => "unknown_key",
            Self::KeyExists(_) => "key_exists",
            Self::WrongScheme { .. } => "wrong_scheme",
            Self::NoSuchAux(_) => "no_such_aux",
            Self::Aborted(_) | Self::AbortedBy { .. } => "aborted",
            Self::Engine(engine::EngineError::Blamed { .. } | engine::EngineError::BadPartial(_)) => "misbehaved",
            Self::Engine(_) => "protocol",
            Self::Timeout(_) => "timeout",
            Self::Unreachable { .. } => "unreachable",
            Self::Misbehaved { .. } => "misbehaved",
            Self::Silent { .. } => "silent",
            Self::Preempted => "preempted",
            Self::Store(_) | Self::Corrupt(_) | Self::ShareFormat { .. } => "storage",
        }
    }
}
