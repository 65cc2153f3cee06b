//! Properties of the contract's pure logic over generated inputs
//! (proptest): the envelope codec, grant encoding and verification,
//! participant and initiator selection, and the initiator's handshake.
//! A failing case is shrunk and saved beside this file
//! (`properties.regressions`), to be checked in: it is replayed first on
//! every later run.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use torcus_contract::envelope::{self, Channel, Envelope};
use torcus_contract::{
    Control, Grant, GrantError, GrantKind, HandshakeState, HashAlgorithm, InitiatorHandshake, MemoryUsedSessions,
    Scheme, SignMessage, select_participants, select_participants_preferring,
};

fn channel() -> impl Strategy<Value = Channel> {
    prop_oneof![Just(Channel::Protocol), Just(Channel::Control), Just(Channel::Hello)]
}

prop_compose! {
    fn an_envelope()(
        session in any::<[u8; 32]>(),
        channel in channel(),
        from in any::<u16>(),
        to in proptest::option::of(0..u16::MAX),
        seq in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) -> Envelope {
        Envelope { session, channel, from, to, seq, payload }
    }
}

fn message() -> impl Strategy<Value = SignMessage> {
    let hash = prop_oneof![Just(HashAlgorithm::Sha256), Just(HashAlgorithm::Keccak256), Just(HashAlgorithm::Sha256d)];
    prop_oneof![
        any::<[u8; 32]>().prop_map(|digest| SignMessage::Digest { digest }),
        (hash, proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(hash, payload)| SignMessage::payload(hash, payload)),
    ]
}

fn kind() -> impl Strategy<Value = GrantKind> {
    let name = "[a-z0-9-]{0,12}";
    let hex = |bytes: usize| proptest::collection::vec(any::<u8>(), bytes).prop_map(hex::encode);
    prop_oneof![
        (name, proptest::option::of(hex(32)), proptest::collection::vec(hex(33), 0..3))
            .prop_map(|(key, aux_info, supersedes)| GrantKind::Keygen { key, aux_info, supersedes }),
        (name, message(), proptest::collection::vec(0..torcus_contract::HARDENED_INDEX, 0..4))
            .prop_map(|(key, message, derivation_path)| GrantKind::Sign { key, message, derivation_path }),
        (name, proptest::collection::vec(hex(32), 0..3)).prop_map(|(key, supersedes)| GrantKind::FrostKeygen {
            key,
            scheme: Scheme::EddsaEd25519,
            supersedes
        }),
        (name, message(), proptest::collection::vec(0..torcus_contract::HARDENED_INDEX, 0..4)).prop_map(
            |(key, message, derivation_path)| GrantKind::FrostSign {
                key,
                scheme: Scheme::SchnorrBip340,
                message,
                derivation_path
            }
        ),
        (name, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(key, message)| GrantKind::FrostSign {
            key,
            scheme: Scheme::EddsaEd25519,
            message: SignMessage::Raw { message },
            derivation_path: vec![]
        }),
    ]
}

prop_compose! {
    /// A grant that passes [`Grant::check`].
    fn a_grant()(
        grant_id in any::<[u8; 16]>(),
        namespace in "[a-z0-9-]{0,12}",
        cluster in "[a-z0-9-]{0,12}",
        kind in kind(),
        participants in proptest::collection::btree_set(0u16..16, 1..6),
        nonce in any::<[u8; 16]>(),
        // Ahead of the real clock, which `MemoryUsedSessions` forgets by.
        issued_at in 4_000_000_000u64..5_000_000_000,
        lifetime in 1..=torcus_contract::MAX_GRANT_LIFETIME_SECS,
    ) -> Grant {
        Grant {
            version: torcus_contract::GRANT_VERSION,
            grant_id,
            namespace,
            cluster,
            kind,
            participants: participants.into_iter().collect(),
            nonce,
            issued_at,
            expires_at: issued_at + lifetime,
        }
    }
}

/// One field of a grant changed; `None` when the change would be no change.
fn changed(grant: &Grant, field: u8, byte: u8) -> Option<Grant> {
    let mut other = grant.clone();
    match field % 8 {
        0 => other.grant_id[usize::from(byte) % 16] ^= 1,
        1 => other.nonce[usize::from(byte) % 16] ^= 1,
        // A byte moved across the namespace/cluster boundary.
        2 => match other.cluster.is_empty() {
            true => other.cluster.push(other.namespace.pop()?),
            false => other.namespace.push(other.cluster.remove(0)),
        },
        3 => other.participants.push(other.participants.last()? + 1),
        4 => other.issued_at -= 1,
        5 => other.expires_at += 1,
        6 => match &mut other.kind {
            GrantKind::Keygen { key, .. }
            | GrantKind::Sign { key, .. }
            | GrantKind::FrostKeygen { key, .. }
            | GrantKind::FrostSign { key, .. } => key.push('k'),
        },
        _ => match &mut other.kind {
            GrantKind::Keygen { aux_info, .. } => *aux_info = aux_info.is_none().then(|| "ab".repeat(32)),
            GrantKind::FrostKeygen { scheme, .. } => *scheme = Scheme::SchnorrBip340,
            GrantKind::FrostSign { scheme: Scheme::EddsaEd25519, message, .. } => {
                let SignMessage::Raw { message } = message else { return None };
                message.push(byte);
            }
            GrantKind::Sign { derivation_path, .. } | GrantKind::FrostSign { derivation_path, .. } => {
                derivation_path.push(u32::from(byte))
            }
        },
    }
    (other != *grant).then_some(other)
}

/// The rank [`select_participants`] documents, computed here from its
/// definition: SHA-256(`b"torcus-select:"` ‖ grant id ‖ index u16 BE).
fn rank(grant_id: &[u8; 16], index: u16) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"torcus-select:")
        .chain_update(grant_id)
        .chain_update(index.to_be_bytes())
        .finalize()
        .into()
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn an_envelope_survives_its_encoding(env in an_envelope()) {
        prop_assert_eq!(envelope::decode(&envelope::encode(&env)).unwrap(), env);
    }

    /// Any bytes: an error or an envelope that encodes back to exactly
    /// those bytes (one encoding per envelope); never a panic.
    #[test]
    fn any_bytes_decode_to_an_error_or_their_one_envelope(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        if let Ok(env) = envelope::decode(&bytes) {
            prop_assert_eq!(envelope::encode(&env), bytes);
        }
    }

    /// A grant keeps its meaning through JSON, the issuer's signature
    /// verifies for each participant once, and for nobody else.
    #[test]
    fn a_signed_grant_verifies_once_for_each_participant(grant in a_grant(), seed in any::<[u8; 32]>()) {
        prop_assert!(grant.check().is_ok(), "{:?}", grant.check());
        let key = SigningKey::from_bytes(&seed);
        let signed = torcus_contract::sign(grant.clone(), &key);
        let back: torcus_contract::SignedGrant = serde_json::from_slice(&serde_json::to_vec(&signed).unwrap()).unwrap();
        prop_assert_eq!(&back, &signed);
        let now = grant.issued_at;
        for party in 0..17u16 {
            let mut used = MemoryUsedSessions::new();
            let first = back.verify(&key.verifying_key(), party, now, &mut used).map(|_| ());
            if grant.participants.contains(&party) {
                prop_assert!(first.is_ok(), "{:?}", first);
                let again = back.verify(&key.verifying_key(), party, now, &mut used).map(|_| ());
                prop_assert!(matches!(again, Err(GrantError::Replayed)), "{:?}", again);
            } else {
                prop_assert!(matches!(first, Err(GrantError::NotAMember { me }) if me == party), "{:?}", first);
            }
        }
        let late = back.verify(&key.verifying_key(), grant.participants[0], grant.expires_at, &mut MemoryUsedSessions::new());
        prop_assert!(matches!(late, Err(GrantError::Expired { .. })), "{:?}", late);
    }

    /// The signed encoding is unambiguous: any one field changed changes
    /// it, so a signature never carries over to another grant.
    #[test]
    fn no_two_grants_share_a_signature(grant in a_grant(), field in any::<u8>(), byte in any::<u8>(), seed in any::<[u8; 32]>()) {
        let Some(other) = changed(&grant, field, byte) else { return Ok(()) };
        prop_assert_ne!(grant.canonical_bytes(), other.canonical_bytes());
        prop_assert_ne!(grant.session_id(), other.session_id());
        let key = SigningKey::from_bytes(&seed);
        let moved = torcus_contract::SignedGrant { grant: other.clone(), signature: torcus_contract::sign(grant, &key).signature };
        let me = other.participants[0];
        let verdict = moved.verify(&key.verifying_key(), me, other.issued_at, &mut MemoryUsedSessions::new());
        prop_assert!(verdict.is_err(), "a signature carried over to {:?}", other);
    }

    /// The initiator is a participant, and anyone computes the same one.
    #[test]
    fn the_initiator_is_a_participant(grant in a_grant()) {
        prop_assert!(grant.participants.contains(&grant.initiator()));
        prop_assert_eq!(grant.clone().initiator(), grant.initiator());
    }

    /// Selection takes the `threshold` healthy indices of lowest rank,
    /// ascending, whatever the order or repetitions of `healthy`, and
    /// nothing when there are too few.
    #[test]
    fn selection_takes_the_lowest_ranks_of_the_healthy(
        grant_id in any::<[u8; 16]>(),
        healthy in proptest::collection::vec(0u16..16, 0..24),
        threshold in 0u16..18,
    ) {
        let distinct: BTreeSet<u16> = healthy.iter().copied().collect();
        let chosen = select_participants(&grant_id, &healthy, threshold);
        if threshold == 0 || distinct.len() < usize::from(threshold) {
            prop_assert_eq!(chosen, None);
            return Ok(());
        }
        let chosen = chosen.unwrap();
        let mut by_rank: Vec<u16> = distinct.iter().copied().collect();
        by_rank.sort_by_key(|index| rank(&grant_id, *index));
        let mut expected: Vec<u16> = by_rank.into_iter().take(usize::from(threshold)).collect();
        expected.sort_unstable();
        prop_assert_eq!(&chosen, &expected);
        let mut shuffled = healthy.clone();
        shuffled.reverse();
        shuffled.extend(healthy.iter().take(3));
        prop_assert_eq!(select_participants(&grant_id, &shuffled, threshold), Some(chosen));
    }

    /// A warm set is taken only when it is exactly `threshold` distinct
    /// healthy parties; the first such one wins, else plain selection.
    #[test]
    fn a_warm_set_is_taken_only_whole_and_healthy(
        grant_id in any::<[u8; 16]>(),
        healthy in proptest::collection::btree_set(0u16..8, 0..8),
        threshold in 1u16..5,
        warm in proptest::collection::vec(proptest::collection::vec(0u16..8, 0..6), 0..4),
    ) {
        let healthy: Vec<u16> = healthy.into_iter().collect();
        let usable = warm.iter().find_map(|set| {
            let set: BTreeSet<u16> = set.iter().copied().collect();
            (set.len() == usize::from(threshold) && set.iter().all(|i| healthy.contains(i)))
                .then(|| set.into_iter().collect::<Vec<u16>>())
        });
        let expected = usable.or_else(|| select_participants(&grant_id, &healthy, threshold));
        prop_assert_eq!(select_participants_preferring(&grant_id, &healthy, threshold, &warm), expected);
    }

    /// Whatever arrives in whatever order: at most one Start, only once
    /// every other participant acked; it carries the offered presignature
    /// only if each of them confirmed exactly it; nothing after an abort
    /// by a participant, and non-participants change nothing.
    #[test]
    fn the_initiator_starts_once_and_only_on_every_ack(
        members in proptest::collection::btree_set(0u16..6, 2..5),
        offer in proptest::option::of(Just([7u8; 32])),
        events in proptest::collection::vec((0u8..3, 0u16..8, proptest::option::of(prop_oneof![Just([7u8; 32]), Just([8u8; 32])])), 0..24),
    ) {
        let participants: Vec<u16> = members.iter().copied().collect();
        let me = participants[0];
        let start = Instant::now();
        let mut handshake = InitiatorHandshake::new([1; 32], participants.clone(), me, start + Duration::from_secs(10));
        if let Some(id) = offer {
            handshake.offer_presignature(id);
        }
        let others: BTreeSet<u16> = participants.iter().copied().filter(|p| *p != me).collect();
        let (mut acked, mut confirmed, mut aborted, mut started) = (BTreeSet::new(), BTreeSet::new(), false, 0);
        for (what, from, presignature) in events {
            match what {
                0 => {
                    let out = handshake.on_ack_with(from, presignature);
                    let counts = !aborted && started == 0 && others.contains(&from) && acked.insert(from);
                    if counts && offer.is_some() && presignature == offer {
                        confirmed.insert(from);
                    }
                    if let Some(Control::Start { session_id, presignature: carried }) = out {
                        started += 1;
                        prop_assert_eq!(session_id, [1; 32]);
                        prop_assert_eq!(&acked, &others, "started before every ack");
                        prop_assert_eq!(carried.is_some(), offer.is_some() && confirmed == others);
                    } else {
                        prop_assert!(out.is_none(), "{:?}", out);
                        prop_assert!(!(counts && acked == others), "every ack in and no Start");
                    }
                }
                1 => {
                    // A participant's abort ends the session, started or not.
                    let ended = handshake.on_abort(from);
                    let counts = !aborted && others.contains(&from);
                    prop_assert_eq!(ended, counts);
                    aborted |= counts;
                }
                _ => {
                    let out = handshake.poll_timeout(start + Duration::from_secs(u64::from(from) * 2));
                    let due = !aborted && started == 0 && u64::from(from) * 2 >= 10;
                    prop_assert_eq!(out.is_some(), due);
                    aborted |= due;
                }
            }
            prop_assert!(started <= 1);
            let state = match (aborted, started) {
                (true, _) => HandshakeState::Aborted,
                (false, 1) => HandshakeState::Started,
                _ => HandshakeState::Waiting,
            };
            prop_assert_eq!(handshake.state(), state);
        }
    }
}
