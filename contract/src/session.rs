//! Who takes part in a session and how they agree to start it.
//!
//! The operator picks participants with [`select_participants`] (or
//! [`select_participants_preferring`], to reuse a signer set that has
//! presignatures). The nodes then run a short handshake before the MPC
//! protocol: the initiator ([`Grant::initiator`]) sends a
//! [`Control::Proposal`] with the signed grant, every other participant
//! verifies it and answers [`Control::Ack`], and once all acks are in the
//! initiator sends [`Control::Start`]. Anyone may send [`Control::Abort`].
//!
//! [`InitiatorHandshake`] and [`ParticipantHandshake`] are sans-IO: the driver
//! feeds them the messages it received (with the sender's index as the
//! transport authenticated it, never as the message claims) and the current
//! time, and sends what they return.
//!
//! Presignatures are made the same way without the operator: the lowest index
//! of a signer set sends [`Control::PresignProposal`] (its own random session
//! id), the others check it and answer Ack, and Start runs the presigning
//! protocol under [`presign_execution_id`]. A signing session may then offer a
//! presignature: the proposal names one the initiator holds, each participant
//! that holds it too sets it aside and says so in its Ack, and Start carries it
//! only when every participant did; otherwise the session runs the full protocol.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::grant::{Grant, SignedGrant};

const SELECT_DOMAIN: &[u8] = b"torcus-select:";
const PRESIGN_DOMAIN: &[u8] = b"torcus-presign-eid-v2:";

/// The ExecutionId of a presigning session: `b"torcus-presign-eid:"` ‖ key
/// length (u32 big-endian) ‖ key ‖ derivation path length (u16 big-endian)
/// ‖ each index (u32 big-endian) ‖ participant count (u16 big-endian) ‖ each
/// participant (u16 big-endian) ‖ session id. Unambiguous, so no two
/// (key, path, signer set, session) tuples share one, and never equal to a
/// grant's execution id (another domain tag).
pub fn presign_execution_id(key: &str, path: &[u32], participants: &[u16], session_id: &[u8; 32]) -> Vec<u8> {
    let mut eid = PRESIGN_DOMAIN.to_vec();
    // Key names are short (a Kubernetes name); the casts saturate anyway,
    // and paths are at most 255 deep.
    eid.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    eid.extend_from_slice(key.as_bytes());
    eid.extend_from_slice(&u16::try_from(path.len()).unwrap_or(u16::MAX).to_be_bytes());
    for index in path {
        eid.extend_from_slice(&index.to_be_bytes());
    }
    eid.extend_from_slice(&u16::try_from(participants.len()).unwrap_or(u16::MAX).to_be_bytes());
    for p in participants {
        eid.extend_from_slice(&p.to_be_bytes());
    }
    eid.extend_from_slice(session_id);
    eid
}

/// Longest a signing or presigning session among `signers` parties may run
/// once started: a minute for two, and 6 s more for each further signer.
/// Every party proves statements to every other, so the work of a session
/// grows with the square of its size and each party's share of it with
/// the size; a fixed limit that suits three signers cuts off eleven on a
/// small machine. The operator waits for a signature a little longer than
/// this ([`sign_deadline`] is the node's limit, not the caller's).
pub fn sign_deadline(signers: usize) -> Duration {
    const BASE: Duration = Duration::from_secs(60);
    const PER_SIGNER: Duration = Duration::from_secs(6);
    let extra = u32::try_from(signers.saturating_sub(2)).unwrap_or(u32::MAX).min(64);
    BASE + PER_SIGNER * extra
}

/// Longest a signing or presigning session among `signers` may go without
/// a message from any of them (counted from this node's last message sent
/// or received): 15 s up to three signers, 2 s more for each further one.
/// On a shared CPU each party's part of a round takes longer the more
/// parties it proves to, and the silence a party waits through is the
/// round the others compute.
pub fn sign_idle_deadline(signers: usize) -> Duration {
    const BASE: Duration = Duration::from_secs(15);
    const PER_SIGNER: Duration = Duration::from_secs(2);
    let extra = u32::try_from(signers.saturating_sub(3)).unwrap_or(u32::MAX).min(64);
    BASE + PER_SIGNER * extra
}

/// Picks `threshold` of the `healthy` party indices for the grant `grant_id`.
///
/// Every index is ranked by SHA-256(`b"torcus-select:"` ‖ grant_id ‖ index as
/// u16 big-endian) and the `threshold` lowest are returned, ascending. The
/// choice depends only on the grant id and the set of healthy indices (not
/// their order or repetitions), so anyone can recompute it, and load spreads
/// over the healthy nodes. `None` if `threshold` is 0 or fewer than
/// `threshold` distinct indices are healthy.
pub fn select_participants(grant_id: &[u8; 16], healthy: &[u16], threshold: u16) -> Option<Vec<u16>> {
    let healthy: BTreeSet<u16> = healthy.iter().copied().collect();
    if threshold == 0 || healthy.len() < usize::from(threshold) {
        return None;
    }
    let mut ranked: Vec<([u8; 32], u16)> =
        healthy.into_iter().map(|index| (selection_rank(grant_id, index), index)).collect();
    ranked.sort_unstable();
    let mut chosen: Vec<u16> = ranked.into_iter().take(usize::from(threshold)).map(|(_, index)| index).collect();
    chosen.sort_unstable();
    Some(chosen)
}

/// Like [`select_participants`], but first tries the `warm` signer sets (those
/// with presignatures in their pool), in the order given: the first one made
/// of exactly `threshold` distinct healthy parties is returned, ascending.
/// Presignatures only work with the exact set that made them, so a warm set
/// with an unhealthy member, or of another size, is passed over.
pub fn select_participants_preferring(
    grant_id: &[u8; 16],
    healthy: &[u16],
    threshold: u16,
    warm: &[Vec<u16>],
) -> Option<Vec<u16>> {
    let usable = |set: &Vec<u16>| {
        let mut set = set.clone();
        set.sort_unstable();
        set.dedup();
        (set.len() == usize::from(threshold) && threshold > 0 && set.iter().all(|index| healthy.contains(index)))
            .then_some(set)
    };
    warm.iter().find_map(usable).or_else(|| select_participants(grant_id, healthy, threshold))
}

fn selection_rank(grant_id: &[u8; 16], index: u16) -> [u8; 32] {
    Sha256::new().chain_update(SELECT_DOMAIN).chain_update(grant_id).chain_update(index.to_be_bytes()).finalize().into()
}

/// A session control message between nodes.
#[expect(
    clippy::large_enum_variant,
    reason = "one proposal per session, moved once; boxing would only make the contract clumsier to build and match"
)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Control {
    /// Initiator → participants: run this grant.
    Proposal {
        /// The grant, as the issuer signed it.
        grant: SignedGrant,
        /// A presignature of the grant's signer set that the initiator holds
        /// and offers to sign with (signing grants only).
        #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_option")]
        presignature: Option<[u8; 32]>,
    },
    /// Participant → initiator: the grant verified, ready to start.
    Ack {
        /// The grant's session id.
        #[serde(with = "hex")]
        session_id: [u8; 32],
        /// The sender's party index; receivers go by the authenticated sender.
        from: u16,
        /// The offered presignature, when the sender holds it and has taken
        /// it out of its pool for this session.
        #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_option")]
        presignature: Option<[u8; 32]>,
    },
    /// Initiator → participants: everyone acked, run the protocol.
    Start {
        /// The grant's session id.
        #[serde(with = "hex")]
        session_id: [u8; 32],
        /// Sign with this presignature instead of running the full protocol;
        /// only sent when every participant acked holding it.
        #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_option")]
        presignature: Option<[u8; 32]>,
    },
    /// Lowest index of a signer set → the rest of the set: make a
    /// presignature together. No grant: the participants check the sender,
    /// the set and their own pool, and answer Ack or Abort.
    PresignProposal {
        /// Random, chosen by the initiator; also the presignature's id.
        #[serde(with = "hex")]
        session_id: [u8; 32],
        /// Key to presign with.
        key: String,
        /// The derivation path the presignature is for (empty: the key
        /// itself), fixed before it is made; one of the cluster's
        /// `presignaturePaths`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        path: Vec<u32>,
        /// The signer set, ascending; the sender is its first member.
        participants: Vec<u16>,
        /// Ids of the presignatures the initiator holds for this set, so
        /// that the others drop ones it lost (e.g. across its restart).
        #[serde(default, skip_serializing_if = "Vec::is_empty", with = "hex_list")]
        held: Vec<[u8; 32]>,
    },
    /// Any → all: the session will not run.
    Abort {
        /// The grant's session id.
        #[serde(with = "hex")]
        session_id: [u8; 32],
        /// The sender's party index; receivers go by the authenticated sender.
        from: u16,
        /// Why, for logs and the session status.
        reason: String,
        /// The participant the sender holds responsible, when it can tell:
        /// one whose message did not decode, or that it could not send to.
        /// A claim, not a proof: the issuer only keeps the two apart.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accused: Option<u16>,
    },
}

impl Control {
    /// The session the message is about; for a proposal, the grant's.
    pub fn session_id(&self) -> [u8; 32] {
        match self {
            Self::Proposal { grant, .. } => grant.grant.session_id(),
            Self::Ack { session_id, .. }
            | Self::Start { session_id, .. }
            | Self::Abort { session_id, .. }
            | Self::PresignProposal { session_id, .. } => *session_id,
        }
    }
}

/// Where a handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeState {
    /// Waiting for acks (initiator) or for Start (participant).
    Waiting,
    /// The protocol may run.
    Started,
    /// The session will not run.
    Aborted,
}

/// The initiator's side of the handshake: collects acks, then starts.
#[derive(Debug)]
pub struct InitiatorHandshake {
    session_id: [u8; 32],
    me: u16,
    participants: Vec<u16>,
    /// Participants other than `me` that have not acked yet.
    missing: BTreeSet<u16>,
    /// The presignature offered in the proposal, if any.
    offered: Option<[u8; 32]>,
    /// Participants whose ack confirmed holding the offered presignature.
    confirmed: BTreeSet<u16>,
    deadline: Instant,
    state: HandshakeState,
}

impl InitiatorHandshake {
    /// A handshake for `session_id` run by `me`, which has sent the proposal
    /// to the other `participants`, who must all ack before `deadline`.
    /// Sessions have at least two participants (threshold ≥ 2); with no other
    /// participant there is no ack to wait for and only the timeout fires.
    pub fn new(session_id: [u8; 32], participants: Vec<u16>, me: u16, deadline: Instant) -> Self {
        let missing = participants.iter().copied().filter(|index| *index != me).collect();
        Self {
            session_id,
            me,
            participants,
            missing,
            offered: None,
            confirmed: BTreeSet::new(),
            deadline,
            state: HandshakeState::Waiting,
        }
    }

    /// Records that the proposal offers presignature `id`: Start will carry
    /// it if every other participant confirms holding it in its ack.
    pub fn offer_presignature(&mut self, id: [u8; 32]) {
        self.offered = Some(id);
    }

    /// The presignature offered, if any.
    pub fn offered(&self) -> Option<[u8; 32]> {
        self.offered
    }

    /// The handshake for a verified grant, run by its initiator. Panics on a
    /// grant without participants, which verification refuses.
    pub fn for_grant(grant: &Grant, deadline: Instant) -> Self {
        Self::new(grant.session_id(), grant.participants.clone(), grant.initiator(), deadline)
    }

    /// An ack from party `from` (the authenticated sender). Returns the Start
    /// to send to the participants once every other participant has acked;
    /// duplicate acks, acks from non-participants and acks after the
    /// handshake ended change nothing.
    pub fn on_ack(&mut self, from: u16) -> Option<Control> {
        self.on_ack_with(from, None)
    }

    /// Like [`on_ack`](Self::on_ack), for an ack that names the presignature
    /// its sender holds. The Start carries the offered presignature only if
    /// every other participant's ack named exactly it; otherwise the session
    /// runs the full protocol.
    pub fn on_ack_with(&mut self, from: u16, presignature: Option<[u8; 32]>) -> Option<Control> {
        if self.state != HandshakeState::Waiting || !self.missing.remove(&from) {
            return None;
        }
        if self.offered.is_some() && presignature == self.offered {
            self.confirmed.insert(from);
        }
        if !self.missing.is_empty() {
            return None;
        }
        self.state = HandshakeState::Started;
        let everyone = self.participants.iter().filter(|p| **p != self.me).all(|p| self.confirmed.contains(p));
        Some(Control::Start { session_id: self.session_id, presignature: self.offered.filter(|_| everyone) })
    }

    /// An abort from party `from` (the authenticated sender). Returns whether
    /// it ended the session: aborts from non-participants are ignored.
    pub fn on_abort(&mut self, from: u16) -> bool {
        on_abort(&mut self.state, &self.participants, self.me, from)
    }

    /// Gives up once `now` has reached the deadline while acks are missing,
    /// returning the Abort to send to the participants; it names the
    /// participants that did not ack.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Control> {
        if self.state != HandshakeState::Waiting || now < self.deadline {
            return None;
        }
        let missing: Vec<u16> = self.missing.iter().copied().collect();
        self.abort(format!("no ack from participants {missing:?}"))
    }

    /// Ends the session for a local reason (e.g. the proposal could not be
    /// sent); returns the Abort to send, or `None` if it had already ended.
    pub fn abort(&mut self, reason: impl Into<String>) -> Option<Control> {
        abort(&mut self.state, self.session_id, self.me, reason.into())
    }

    /// Participants that have not acked yet, ascending.
    pub fn missing(&self) -> Vec<u16> {
        self.missing.iter().copied().collect()
    }

    /// When the acks are due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The session.
    pub fn session_id(&self) -> [u8; 32] {
        self.session_id
    }

    /// Where the handshake stands.
    pub fn state(&self) -> HandshakeState {
        self.state
    }
}

/// A participant's side of the handshake: acks a verified proposal, then
/// waits for the initiator's Start.
#[derive(Debug)]
pub struct ParticipantHandshake {
    session_id: [u8; 32],
    me: u16,
    initiator: u16,
    participants: Vec<u16>,
    deadline: Instant,
    state: HandshakeState,
}

impl ParticipantHandshake {
    /// The handshake for `grant`, which `me` has verified, with Start due
    /// before `deadline`. Panics on a grant without participants, which
    /// verification refuses.
    pub fn new(grant: &Grant, me: u16, deadline: Instant) -> Self {
        Self {
            session_id: grant.session_id(),
            me,
            initiator: grant.initiator(),
            participants: grant.participants.clone(),
            deadline,
            state: HandshakeState::Waiting,
        }
    }

    /// A handshake for a session without a grant (a presigning session):
    /// `initiator` proposed it to `participants`, `me` among them, and Start
    /// is due before `deadline`.
    pub fn for_session(
        session_id: [u8; 32],
        participants: Vec<u16>,
        initiator: u16,
        me: u16,
        deadline: Instant,
    ) -> Self {
        Self { session_id, me, initiator, participants, deadline, state: HandshakeState::Waiting }
    }

    /// The ack to send to the initiator.
    pub fn ack(&self) -> Control {
        self.ack_with(None)
    }

    /// The ack to send to the initiator, naming the offered presignature
    /// when this participant holds it (and has set it aside).
    pub fn ack_with(&self, presignature: Option<[u8; 32]>) -> Control {
        Control::Ack { session_id: self.session_id, from: self.me, presignature }
    }

    /// A Start from party `from` (the authenticated sender). Returns whether
    /// the protocol may now run: only the initiator's Start counts, and only
    /// while waiting.
    pub fn on_start(&mut self, from: u16) -> bool {
        if self.state != HandshakeState::Waiting || from != self.initiator {
            return false;
        }
        self.state = HandshakeState::Started;
        true
    }

    /// An abort from party `from` (the authenticated sender). Returns whether
    /// it ended the session: aborts from non-participants are ignored.
    pub fn on_abort(&mut self, from: u16) -> bool {
        on_abort(&mut self.state, &self.participants, self.me, from)
    }

    /// Gives up once `now` has reached the deadline without a Start,
    /// returning the Abort to send to the participants.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Control> {
        if self.state != HandshakeState::Waiting || now < self.deadline {
            return None;
        }
        self.abort("no start from initiator")
    }

    /// Ends the session for a local reason; returns the Abort to send, or
    /// `None` if it had already ended.
    pub fn abort(&mut self, reason: impl Into<String>) -> Option<Control> {
        abort(&mut self.state, self.session_id, self.me, reason.into())
    }

    /// The party expected to send Start.
    pub fn initiator(&self) -> u16 {
        self.initiator
    }

    /// When Start is due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The session.
    pub fn session_id(&self) -> [u8; 32] {
        self.session_id
    }

    /// Where the handshake stands.
    pub fn state(&self) -> HandshakeState {
        self.state
    }
}

/// What a handshake made of one input: the one interface a node's driver
/// needs, for either side of either kind of session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeStep {
    /// Nothing decided yet: wait for the next message or the deadline.
    Waiting,
    /// The protocol may run, with this presignature (`None`: the full
    /// protocol). `send` (the initiator's Start) goes to the other
    /// participants first.
    Started {
        /// What to send to the other participants before running.
        send: Option<Control>,
        /// The presignature the session runs with, if any.
        presignature: Option<[u8; 32]>,
    },
    /// A participant aborted the session.
    AbortedBy {
        /// Who (the authenticated sender).
        party: u16,
        /// Its reason.
        reason: String,
        /// Whom it accused, if anyone.
        accused: Option<u16>,
    },
    /// The deadline passed: `send` (an Abort naming what was missing) goes
    /// to the other participants.
    TimedOut {
        /// What to send to the other participants.
        send: Option<Control>,
        /// Why, for the session status.
        reason: String,
    },
}

/// Either side of a handshake, driven by one loop: feed it every control
/// message of its session ([`on_control`](Self::on_control)) and, when no
/// message came before [`deadline`](Self::deadline), the time
/// ([`on_time`](Self::on_time)); act on the step returned until it is not
/// [`HandshakeStep::Waiting`].
pub trait Handshake {
    /// A control message from party `from` (the authenticated sender).
    fn on_control(&mut self, from: u16, control: Control) -> HandshakeStep;
    /// The time is `now`: at or past the deadline the handshake gives up.
    fn on_time(&mut self, now: Instant) -> HandshakeStep;
    /// When the handshake gives up.
    fn deadline(&self) -> Instant;
    /// The session's participants, the driver's own index among them.
    fn participants(&self) -> &[u16];
    /// The session.
    fn session(&self) -> [u8; 32];
    /// Parties whose answer this side still waits for and may ask again:
    /// for the initiator, the participants that have not acked (a proposal
    /// may be lost with its connection; a participant answers a repeated
    /// one with its ack again); for a participant, nobody.
    fn awaiting(&self) -> Vec<u16> {
        Vec::new()
    }
}

impl Handshake for InitiatorHandshake {
    fn on_control(&mut self, from: u16, control: Control) -> HandshakeStep {
        match control {
            Control::Ack { presignature, .. } => match self.on_ack_with(from, presignature) {
                Some(start) => {
                    let presignature = match &start {
                        Control::Start { presignature, .. } => *presignature,
                        _ => None,
                    };
                    HandshakeStep::Started { send: Some(start), presignature }
                }
                None => HandshakeStep::Waiting,
            },
            Control::Abort { reason, accused, .. } if self.on_abort(from) => {
                HandshakeStep::AbortedBy { party: from, reason, accused }
            }
            _ => HandshakeStep::Waiting,
        }
    }

    fn on_time(&mut self, now: Instant) -> HandshakeStep {
        match self.poll_timeout(now) {
            Some(abort) => {
                let reason = match &abort {
                    Control::Abort { reason, .. } => reason.clone(),
                    _ => "handshake timed out".to_owned(),
                };
                HandshakeStep::TimedOut { send: Some(abort), reason }
            }
            None => HandshakeStep::Waiting,
        }
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn participants(&self) -> &[u16] {
        &self.participants
    }

    fn session(&self) -> [u8; 32] {
        self.session_id
    }

    fn awaiting(&self) -> Vec<u16> {
        match self.state {
            HandshakeState::Waiting => self.missing(),
            _ => Vec::new(),
        }
    }
}

impl Handshake for ParticipantHandshake {
    fn on_control(&mut self, from: u16, control: Control) -> HandshakeStep {
        match control {
            Control::Start { presignature, .. } if self.on_start(from) => {
                HandshakeStep::Started { send: None, presignature }
            }
            Control::Abort { reason, accused, .. } if self.on_abort(from) => {
                HandshakeStep::AbortedBy { party: from, reason, accused }
            }
            _ => HandshakeStep::Waiting,
        }
    }

    fn on_time(&mut self, now: Instant) -> HandshakeStep {
        match self.poll_timeout(now) {
            Some(abort) => HandshakeStep::TimedOut { send: Some(abort), reason: "no start from initiator".into() },
            None => HandshakeStep::Waiting,
        }
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn participants(&self) -> &[u16] {
        &self.participants
    }

    fn session(&self) -> [u8; 32] {
        self.session_id
    }
}

fn on_abort(state: &mut HandshakeState, participants: &[u16], me: u16, from: u16) -> bool {
    if *state == HandshakeState::Aborted || from == me || !participants.contains(&from) {
        return false;
    }
    *state = HandshakeState::Aborted;
    true
}

fn abort(state: &mut HandshakeState, session_id: [u8; 32], me: u16, reason: String) -> Option<Control> {
    if *state == HandshakeState::Aborted {
        return None;
    }
    *state = HandshakeState::Aborted;
    Some(Control::Abort { session_id, from: me, reason, accused: None })
}

/// `Option<[u8; 32]>` as an optional hex string.
mod hex_option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<[u8; 32]>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => serializer.serialize_some(&hex::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<[u8; 32]>, D::Error> {
        Option::<String>::deserialize(deserializer)?.map(|text| parse(&text)).transpose()
    }

    pub(super) fn parse<E: serde::de::Error>(text: &str) -> Result<[u8; 32], E> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(E::custom)?;
        Ok(bytes)
    }
}

/// `Vec<[u8; 32]>` as a list of hex strings.
mod hex_list {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[[u8; 32]], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(value.len()))?;
        for bytes in value {
            seq.serialize_element(&hex::encode(bytes))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<[u8; 32]>, D::Error> {
        Vec::<String>::deserialize(deserializer)?.iter().map(|text| super::hex_option::parse(text)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet, VecDeque};
    use std::time::Duration;

    #[test]
    fn sign_deadline_grows_with_the_signers() {
        assert_eq!(sign_deadline(2), Duration::from_secs(60));
        assert_eq!(sign_deadline(3), Duration::from_secs(66));
        assert_eq!(sign_deadline(11), Duration::from_secs(114));
        assert_eq!(sign_deadline(16), Duration::from_secs(144));
        // Never below a minute, and bounded whatever the count.
        assert_eq!(sign_deadline(0), Duration::from_secs(60));
        assert_eq!(sign_deadline(usize::MAX), Duration::from_secs(60 + 6 * 64));
    }

    #[test]
    fn sign_idle_deadline_grows_beyond_three_signers() {
        assert_eq!(sign_idle_deadline(2), Duration::from_secs(15));
        assert_eq!(sign_idle_deadline(3), Duration::from_secs(15));
        assert_eq!(sign_idle_deadline(11), Duration::from_secs(31));
        assert_eq!(sign_idle_deadline(usize::MAX), Duration::from_secs(15 + 2 * 64));
        // Always well inside the session's own deadline.
        for n in 0..=16 {
            assert!(sign_idle_deadline(n) * 2 < sign_deadline(n), "{n}");
        }
    }

    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::grant::tests::{NOW, sign_grant};
    use crate::grant::{MemoryUsedSessions, sign};

    const SID: [u8; 32] = [5; 32];

    fn grant(participants: Vec<u16>) -> Grant {
        sign_grant(participants, vec![])
    }

    #[test]
    fn selection_is_deterministic_and_exact() {
        let healthy = [0, 1, 2, 3, 4, 5, 6];
        let chosen = select_participants(&[1; 16], &healthy, 3).unwrap();
        assert_eq!(chosen.len(), 3);
        assert!(chosen.windows(2).all(|w| w[0] < w[1]), "{chosen:?}");
        assert!(chosen.iter().all(|i| healthy.contains(i)));
        assert_eq!(select_participants(&[1; 16], &healthy, 3).unwrap(), chosen);
        // Order and repetitions of the healthy list do not matter.
        assert_eq!(select_participants(&[1; 16], &[6, 5, 4, 3, 2, 1, 0, 0, 3], 3).unwrap(), chosen);
        assert_eq!(select_participants(&[1; 16], &healthy, 7).unwrap(), healthy.to_vec());
    }

    #[test]
    fn selection_needs_enough_healthy_nodes() {
        assert_eq!(select_participants(&[1; 16], &[0, 1], 3), None);
        assert_eq!(select_participants(&[1; 16], &[0, 1, 1], 3), None, "duplicates do not count twice");
        assert_eq!(select_participants(&[1; 16], &[], 1), None);
        assert_eq!(select_participants(&[1; 16], &[0, 1, 2], 0), None);
    }

    #[test]
    fn selection_varies_with_the_grant() {
        let healthy = [0, 1, 2, 3, 4];
        let sets: HashSet<Vec<u16>> =
            (0..50).map(|_| select_participants(&Grant::new_id(), &healthy, 3).unwrap()).collect();
        assert!(sets.len() > 1, "{sets:?}");
        assert!(sets.iter().all(|s| s.len() == 3 && s.iter().all(|i| healthy.contains(i))));
        // Every healthy node gets chosen for some grant.
        let covered: HashSet<u16> = sets.iter().flatten().copied().collect();
        assert_eq!(covered.len(), healthy.len(), "{covered:?}");
    }

    #[test]
    fn preferring_picks_a_healthy_warm_set() {
        let healthy = [0, 1, 2, 3, 4];
        let warm = vec![vec![4, 1, 0], vec![2, 3, 4]];
        assert_eq!(select_participants_preferring(&[1; 16], &healthy, 3, &warm).unwrap(), vec![0, 1, 4]);
        // A warm set with an unhealthy member is passed over for the next.
        assert_eq!(select_participants_preferring(&[1; 16], &[0, 2, 3, 4], 3, &warm).unwrap(), vec![2, 3, 4]);
        // No usable warm set: the hash-based choice.
        let degraded = [0, 2, 3];
        let warm = vec![vec![0, 1, 2], vec![0, 2], vec![0, 2, 2], vec![0, 2, 3, 5]];
        assert_eq!(
            select_participants_preferring(&[1; 16], &degraded, 3, &warm),
            select_participants(&[1; 16], &degraded, 3)
        );
        assert_eq!(select_participants_preferring(&[1; 16], &[0, 1], 3, &[vec![0, 1, 2]]), None);
    }

    #[test]
    fn control_json_shape_and_session_id() {
        let ack = Control::Ack { session_id: SID, from: 2, presignature: None };
        let value = serde_json::to_value(&ack).unwrap();
        assert_eq!(value, serde_json::json!({"type": "ack", "sessionId": "05".repeat(32), "from": 2}));
        let abort = Control::Abort { session_id: SID, from: 1, reason: "x".into(), accused: None };
        let start = Control::Start { session_id: SID, presignature: None };
        let signed = sign(grant(vec![0, 1, 2]), &SigningKey::from_bytes(&[7; 32]));
        let proposal = Control::Proposal { grant: signed.clone(), presignature: None };
        assert_eq!(serde_json::to_value(&proposal).unwrap()["type"], "proposal");
        for message in [ack, abort, start, proposal.clone()] {
            let back: Control = serde_json::from_slice(&serde_json::to_vec(&message).unwrap()).unwrap();
            assert_eq!(back, message);
        }
        assert_eq!(proposal.session_id(), signed.grant.session_id());
        assert_eq!(Control::Start { session_id: SID, presignature: None }.session_id(), SID);
        assert!(serde_json::from_str::<Control>(r#"{"type":"start","sessionId":"05"}"#).is_err());
    }

    #[test]
    fn initiator_starts_only_after_every_ack() {
        let t0 = Instant::now();
        let mut hs = InitiatorHandshake::new(SID, vec![0, 2, 4, 6], 2, t0 + Duration::from_secs(5));
        assert_eq!(hs.missing(), vec![0, 4, 6]);
        assert_eq!(hs.on_ack(0), None);
        assert_eq!(hs.on_ack(0), None, "duplicate");
        assert_eq!(hs.on_ack(2), None, "self");
        assert_eq!(hs.on_ack(7), None, "non-participant");
        assert_eq!(hs.on_ack(4), None);
        assert_eq!(hs.missing(), vec![6]);
        assert_eq!(hs.state(), HandshakeState::Waiting);
        assert_eq!(hs.on_ack(6), Some(Control::Start { session_id: SID, presignature: None }));
        assert_eq!(hs.state(), HandshakeState::Started);
        assert_eq!(hs.on_ack(6), None, "start is sent once");
        assert_eq!(hs.poll_timeout(t0 + Duration::from_secs(60)), None, "started sessions do not time out here");
    }

    #[test]
    fn only_an_initiator_still_waiting_asks_again() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(5);
        let mut hs = InitiatorHandshake::new(SID, vec![0, 2, 4], 0, deadline);
        assert_eq!(Handshake::awaiting(&hs), vec![2, 4]);
        hs.on_ack(2);
        assert_eq!(Handshake::awaiting(&hs), vec![4]);
        hs.on_ack(4);
        assert_eq!(Handshake::awaiting(&hs), Vec::<u16>::new(), "started");
        let mut late = InitiatorHandshake::new(SID, vec![0, 2], 0, deadline);
        late.poll_timeout(deadline);
        assert_eq!(Handshake::awaiting(&late), Vec::<u16>::new(), "timed out");
        let g = grant(vec![0, 2]);
        let participant = ParticipantHandshake::new(&g, 2, deadline);
        assert_eq!(Handshake::awaiting(&participant), Vec::<u16>::new());
    }

    #[test]
    fn initiator_times_out_naming_the_missing() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(5);
        let mut hs = InitiatorHandshake::new(SID, vec![0, 2, 4], 0, deadline);
        assert_eq!(hs.on_ack(2), None);
        assert_eq!(hs.poll_timeout(t0 + Duration::from_secs(4)), None);
        let Some(Control::Abort { session_id, from, reason, .. }) = hs.poll_timeout(deadline) else {
            panic!("no abort at the deadline");
        };
        assert_eq!((session_id, from), (SID, 0));
        assert!(reason.contains('4') && !reason.contains('2'), "{reason}");
        assert_eq!(hs.state(), HandshakeState::Aborted);
        assert_eq!(hs.poll_timeout(deadline), None, "abort is sent once");
        assert_eq!(hs.on_ack(4), None, "late ack does not start");
    }

    #[test]
    fn initiator_aborts_on_a_participant_abort() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut hs = InitiatorHandshake::new(SID, vec![0, 2, 4], 0, deadline);
        assert!(!hs.on_abort(9), "non-participant");
        assert!(!hs.on_abort(0), "self");
        assert_eq!(hs.state(), HandshakeState::Waiting);
        assert!(hs.on_abort(4));
        assert_eq!(hs.state(), HandshakeState::Aborted);
        assert_eq!(hs.on_ack(2), None);
        assert_eq!(hs.on_ack(4), None);
        assert_eq!(hs.poll_timeout(deadline), None);
        assert_eq!(hs.abort("again"), None);
    }

    #[test]
    fn participant_acks_and_waits_for_the_initiator() {
        let g = grant(vec![0, 2, 4]);
        let initiator = g.initiator();
        let me = *g.participants.iter().find(|i| **i != initiator).unwrap();
        let other = *g.participants.iter().find(|i| **i != initiator && **i != me).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut hs = ParticipantHandshake::new(&g, me, deadline);
        assert_eq!(hs.ack(), Control::Ack { session_id: g.session_id(), from: me, presignature: None });
        assert!(!hs.on_start(other), "only the initiator starts");
        assert!(!hs.on_start(9));
        assert!(hs.on_start(initiator));
        assert_eq!(hs.state(), HandshakeState::Started);
        assert!(!hs.on_start(initiator));
        assert_eq!(hs.poll_timeout(deadline + Duration::from_secs(1)), None);
        assert!(hs.on_abort(other), "a started session can still be aborted");
    }

    #[test]
    fn participant_times_out_without_start() {
        let g = grant(vec![0, 2, 4]);
        let me = *g.participants.iter().find(|i| **i != g.initiator()).unwrap();
        let t0 = Instant::now();
        let mut hs = ParticipantHandshake::new(&g, me, t0 + Duration::from_secs(5));
        assert_eq!(hs.poll_timeout(t0), None);
        assert_eq!(
            hs.poll_timeout(t0 + Duration::from_secs(5)),
            Some(Control::Abort {
                session_id: g.session_id(),
                from: me,
                reason: "no start from initiator".into(),
                accused: None
            })
        );
        assert!(!hs.on_start(g.initiator()), "late start does not run");
        assert_eq!(hs.poll_timeout(t0 + Duration::from_secs(6)), None);
    }

    /// Three nodes in memory: the proposal travels as JSON, each node
    /// verifies the grant, and the handshake starts everyone.
    #[test]
    fn simulated_handshake_starts_every_node() {
        let issuer = SigningKey::from_bytes(&[7; 32]);
        let healthy = [0, 1, 2, 3, 4];
        let grant_id = Grant::new_id();
        let participants = select_participants(&grant_id, &healthy, 3).unwrap();
        let g = Grant { grant_id, nonce: Grant::new_nonce(), ..grant(participants.clone()) };
        let wire =
            serde_json::to_vec(&Control::Proposal { grant: sign(g.clone(), &issuer), presignature: None }).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);

        let initiator = g.initiator();
        let mut lead = InitiatorHandshake::for_grant(&g, deadline);
        let mut others = Vec::new();
        for me in participants.iter().copied().filter(|i| *i != initiator) {
            let Control::Proposal { grant, .. } = serde_json::from_slice(&wire).unwrap() else {
                panic!("not a proposal");
            };
            let verified = grant.verify(&issuer.verifying_key(), me, NOW, &mut MemoryUsedSessions::with_clock(|| NOW));
            let hs = ParticipantHandshake::new(verified.unwrap(), me, deadline);
            assert_eq!(hs.initiator(), initiator);
            others.push(hs);
        }
        let mut start = None;
        for hs in &others {
            let Control::Ack { session_id, from, .. } = hs.ack() else { panic!("not an ack") };
            assert_eq!(session_id, lead.session_id());
            start = start.or(lead.on_ack(from));
        }
        assert_eq!(start, Some(Control::Start { session_id: g.session_id(), presignature: None }));
        for hs in &mut others {
            assert!(hs.on_start(initiator));
        }
    }

    #[test]
    fn presignature_is_started_only_when_everyone_holds_it() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let offered = [8; 32];
        let mut hs = InitiatorHandshake::new(SID, vec![0, 2, 4], 0, deadline);
        hs.offer_presignature(offered);
        assert_eq!(hs.offered(), Some(offered));
        assert_eq!(hs.on_ack_with(2, Some(offered)), None);
        assert_eq!(
            hs.on_ack_with(4, Some(offered)),
            Some(Control::Start { session_id: SID, presignature: Some(offered) })
        );

        // One participant lacks it (or names another): the full protocol.
        for other in [None, Some([9; 32])] {
            let mut hs = InitiatorHandshake::new(SID, vec![0, 2, 4], 0, deadline);
            hs.offer_presignature(offered);
            assert_eq!(hs.on_ack_with(2, Some(offered)), None);
            assert_eq!(hs.on_ack_with(4, other), Some(Control::Start { session_id: SID, presignature: None }));
        }
        // Nothing offered: a confirmation out of the blue changes nothing.
        let mut hs = InitiatorHandshake::new(SID, vec![0, 2], 0, deadline);
        assert_eq!(hs.on_ack_with(2, Some(offered)), Some(Control::Start { session_id: SID, presignature: None }));
        // A duplicate ack cannot confirm for someone else.
        let mut hs = InitiatorHandshake::new(SID, vec![0, 2, 4], 0, deadline);
        hs.offer_presignature(offered);
        assert_eq!(hs.on_ack_with(2, Some(offered)), None);
        assert_eq!(hs.on_ack_with(2, Some(offered)), None);
        assert_eq!(hs.missing(), vec![4]);
    }

    #[test]
    fn presign_proposal_and_new_fields_on_the_wire() {
        let proposal = Control::PresignProposal {
            session_id: SID,
            key: "default".into(),
            path: vec![44, 0],
            participants: vec![0, 2],
            held: vec![[1; 32], [2; 32]],
        };
        let value = serde_json::to_value(&proposal).unwrap();
        assert_eq!(value["type"], "presignProposal");
        assert_eq!(value["path"], serde_json::json!([44, 0]));
        assert_eq!(value["held"][1], "02".repeat(32));
        assert_eq!(serde_json::from_value::<Control>(value).unwrap(), proposal);
        assert_eq!(proposal.session_id(), SID);
        let start = Control::Start { session_id: SID, presignature: Some([3; 32]) };
        assert_eq!(serde_json::to_value(&start).unwrap()["presignature"], "03".repeat(32));
        let ack = Control::Ack { session_id: SID, from: 1, presignature: Some([4; 32]) };
        assert_eq!(serde_json::from_slice::<Control>(&serde_json::to_vec(&ack).unwrap()).unwrap(), ack);

        // Messages of nodes that predate presignatures still parse, and
        // absent fields are not written.
        let old = format!(r#"{{"type":"start","sessionId":"{}"}}"#, "05".repeat(32));
        assert_eq!(
            serde_json::from_str::<Control>(&old).unwrap(),
            Control::Start { session_id: SID, presignature: None }
        );
        let old =
            format!(r#"{{"type":"presignProposal","sessionId":"{}","key":"k","participants":[0,1]}}"#, "05".repeat(32));
        assert!(
            matches!(serde_json::from_str::<Control>(&old).unwrap(), Control::PresignProposal { held, path, .. } if held.is_empty() && path.is_empty())
        );
        let plain = serde_json::to_value(Control::Ack { session_id: SID, from: 1, presignature: None }).unwrap();
        assert!(plain.get("presignature").is_none(), "{plain}");
        let bad = format!(r#"{{"type":"start","sessionId":"{}","presignature":"05"}}"#, "05".repeat(32));
        assert!(serde_json::from_str::<Control>(&bad).is_err());
    }

    #[test]
    fn presign_execution_ids_are_unambiguous() {
        let base = presign_execution_id("ab", &[], &[0, 1], &SID);
        assert!(base.starts_with(b"torcus-presign-eid-v2:"));
        let others = [
            presign_execution_id("a", &[], &[0, 1], &SID),
            presign_execution_id("ab", &[0], &[0, 1], &SID),
            presign_execution_id("ab", &[1], &[0, 1], &SID),
            presign_execution_id("ab", &[0, 1], &[0, 1], &SID),
            presign_execution_id("ab", &[], &[0, 2], &SID),
            presign_execution_id("ab", &[], &[1, 0], &SID),
            presign_execution_id("ab", &[], &[0, 1, 2], &SID),
            presign_execution_id("ab", &[], &[0, 1], &[6; 32]),
        ];
        let mut all: HashSet<Vec<u8>> = others.into_iter().collect();
        assert!(all.insert(base.clone()));
        assert_eq!(all.len(), 9);
        assert_eq!(presign_execution_id("ab", &[], &[0, 1], &SID), base, "deterministic");
    }

    #[test]
    fn participant_handshake_without_a_grant() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut hs = ParticipantHandshake::for_session(SID, vec![1, 3], 1, 3, deadline);
        assert_eq!(hs.ack(), Control::Ack { session_id: SID, from: 3, presignature: None });
        assert_eq!(hs.ack_with(Some([1; 32])), Control::Ack { session_id: SID, from: 3, presignature: Some([1; 32]) });
        assert!(!hs.on_start(3));
        assert!(hs.on_start(1));
    }

    /// N parties of one session in memory, on a virtual clock: control
    /// messages are delivered in the order sent, a party in `silent` is cut
    /// off (everything it sends or is sent is lost), and when nothing is in flight the clock jumps
    /// to the earliest deadline. Runs every handshake through the same
    /// [`Handshake`] interface a node's driver uses.
    struct Harness {
        now: Instant,
        parties: BTreeMap<u16, Box<dyn Handshake>>,
        outcome: BTreeMap<u16, (Instant, HandshakeStep)>,
        queue: VecDeque<(u16, u16, Control)>,
        silent: BTreeSet<u16>,
    }

    impl Harness {
        /// A session among `participants` led by `initiator`, which offers
        /// `offered`; each participant in `holding` holds it. Deadlines
        /// are `timeout` from the start, the initiator's first.
        fn new(
            participants: &[u16],
            initiator: u16,
            offered: Option<[u8; 32]>,
            holding: &[u16],
            silent: &[u16],
        ) -> Self {
            let now = Instant::now();
            let timeout = Duration::from_secs(10);
            let mut h = Self {
                now,
                parties: BTreeMap::new(),
                outcome: BTreeMap::new(),
                queue: VecDeque::new(),
                silent: silent.iter().copied().collect(),
            };
            let mut lead = InitiatorHandshake::new(SID, participants.to_vec(), initiator, now + timeout);
            if let Some(id) = offered {
                lead.offer_presignature(id);
            }
            h.parties.insert(initiator, Box::new(lead));
            for &me in participants.iter().filter(|p| **p != initiator) {
                // A participant's deadline runs from the proposal's arrival.
                let deadline = now + timeout + Duration::from_millis(5);
                let hs = ParticipantHandshake::for_session(SID, participants.to_vec(), initiator, me, deadline);
                let held = offered.filter(|_| holding.contains(&me));
                h.send(me, initiator, hs.ack_with(held));
                h.parties.insert(me, Box::new(hs));
            }
            h
        }

        fn send(&mut self, from: u16, to: u16, control: Control) {
            if !self.silent.contains(&from) && !self.silent.contains(&to) {
                self.queue.push_back((from, to, control));
            }
        }

        fn record(&mut self, me: u16, step: HandshakeStep) {
            if step == HandshakeStep::Waiting {
                return;
            }
            let (HandshakeStep::Started { send: Some(out), .. } | HandshakeStep::TimedOut { send: Some(out), .. }) =
                &step
            else {
                self.outcome.insert(me, (self.now, step));
                return;
            };
            let out = out.clone();
            let others: Vec<u16> = self.parties[&me].participants().iter().copied().filter(|p| *p != me).collect();
            for to in others {
                self.send(me, to, out.clone());
            }
            self.outcome.insert(me, (self.now, step));
        }

        /// Runs until every party has an outcome; bounded.
        fn run(mut self) -> BTreeMap<u16, (Instant, HandshakeStep)> {
            for _ in 0..1000 {
                if let Some((from, to, control)) = self.queue.pop_front() {
                    if self.outcome.contains_key(&to) {
                        continue;
                    }
                    let step = self.parties.get_mut(&to).expect("a party").on_control(from, control);
                    self.record(to, step);
                    continue;
                }
                let waiting: Vec<u16> =
                    self.parties.keys().copied().filter(|p| !self.outcome.contains_key(p)).collect();
                let Some(next) = waiting.iter().map(|p| self.parties[p].deadline()).min() else {
                    return self.outcome;
                };
                self.now = self.now.max(next);
                for me in waiting {
                    let now = self.now;
                    let step = self.parties.get_mut(&me).expect("a party").on_time(now);
                    self.record(me, step);
                }
            }
            panic!("the handshake did not settle");
        }
    }

    fn started(step: &HandshakeStep) -> Option<Option<[u8; 32]>> {
        match step {
            HandshakeStep::Started { presignature, .. } => Some(*presignature),
            _ => None,
        }
    }

    #[test]
    fn harness_every_party_starts_at_once_with_the_presignature_all_hold() {
        let id = Some([8; 32]);
        let outcome = Harness::new(&[1, 3, 4, 6], 1, id, &[3, 4, 6], &[]).run();
        assert_eq!(outcome.len(), 4);
        let t0 = outcome[&1].0;
        for (party, (at, step)) in &outcome {
            assert_eq!(started(step), Some(id), "party {party}: {step:?}");
            assert_eq!(*at, t0, "no one waited for a deadline");
        }
        // One member lacks it: everyone runs the full protocol, still at once.
        let outcome = Harness::new(&[1, 3, 4, 6], 1, id, &[3, 6], &[]).run();
        assert!(outcome.values().all(|(_, step)| started(step) == Some(None)), "{outcome:?}");
    }

    #[test]
    fn harness_a_missing_ack_aborts_everyone_at_the_deadline_naming_it() {
        let outcome = Harness::new(&[0, 2, 5], 0, None, &[], &[5]).run();
        let (at, lead) = &outcome[&0];
        let HandshakeStep::TimedOut { reason, .. } = lead else { panic!("initiator: {lead:?}") };
        assert_eq!(reason, "no ack from participants [5]");
        // The member that acked learns it from the initiator's Abort, at
        // the same instant; the silent one gives up at its own deadline.
        let (at2, member) = &outcome[&2];
        assert_eq!(at2, at);
        assert!(
            matches!(member, HandshakeStep::AbortedBy { party: 0, reason, .. } if reason.contains("[5]")),
            "{member:?}"
        );
        let (at5, silent) = &outcome[&5];
        assert!(at5 > at);
        assert!(matches!(silent, HandshakeStep::TimedOut { reason, .. } if reason == "no start from initiator"));
        assert!(outcome.values().all(|(_, step)| started(step).is_none()));
    }

    #[test]
    fn harness_a_silent_initiator_times_every_member_out() {
        let outcome = Harness::new(&[0, 2, 5], 0, None, &[], &[0]).run();
        for party in [2, 5] {
            assert!(
                matches!(&outcome[&party].1, HandshakeStep::TimedOut { reason, .. } if reason == "no start from initiator"),
                "{party}: {:?}",
                outcome[&party]
            );
        }
        assert!(
            matches!(&outcome[&0].1, HandshakeStep::TimedOut { reason, .. } if reason == "no ack from participants [2, 5]"),
            "{:?}",
            outcome[&0]
        );
    }

    #[test]
    fn harness_a_refusal_ends_the_initiator_and_a_late_start_runs_nobody() {
        let mut h = Harness::new(&[0, 2, 5], 0, None, &[], &[]);
        // Party 5 refused instead of acking: its Abort overtakes its ack.
        h.queue.retain(|(from, ..)| *from != 5);
        h.queue.push_front((5, 0, Control::Abort { session_id: SID, from: 5, reason: "no".into(), accused: None }));
        let outcome = h.run();
        assert!(matches!(&outcome[&0].1, HandshakeStep::AbortedBy { party: 5, .. }), "{:?}", outcome[&0]);
        assert!(outcome.values().all(|(_, step)| started(step).is_none()), "{outcome:?}");
        // An Abort that claims to come from elsewhere counts for its real
        // sender only: a non-participant cannot end the session.
        let mut lead = InitiatorHandshake::new(SID, vec![0, 2], 0, Instant::now());
        let forged = Control::Abort { session_id: SID, from: 2, reason: "forged".into(), accused: None };
        assert_eq!(lead.on_control(9, forged), HandshakeStep::Waiting);
        assert_eq!(
            lead.on_control(9, Control::Ack { session_id: SID, from: 2, presignature: None }),
            HandshakeStep::Waiting
        );
    }
}
