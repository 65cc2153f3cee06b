//! The HTTP relay's wire format, for clusters whose nodes cannot reach each
//! other directly (`http` transport mode, and the fallback of `hybrid`): the
//! operator serves the relay, nodes are its clients, and both read the
//! paths, headers and signing input from here.
//!
//! # Wire format
//!
//! - Signed requests (both kinds) add `x-torcus-time` (Unix ms),
//!   `x-torcus-certificate` (hex DER leaf) and `x-torcus-signature` (hex DER
//!   ECDSA P-256 SHA-256 over [`signing_input`]).
//! - `POST /relay/v1/messages?to=<j>` with headers `x-torcus-party: <i>` and
//!   `x-torcus-cluster: <namespace>/<cluster>`; the body is one envelope in
//!   the frame body encoding ([`crate::envelope::encode`]). The relay queues it for
//!   party `j`. `to` may be left out when the envelope names its recipient;
//!   a broadcast (`envelope.to == None`) must name one: the sending node fans
//!   out itself, one POST per recipient, and the envelope keeps `to == None`
//!   so the receiving engine still sees a broadcast. Answers `202` when
//!   queued, `4xx`/`503` with a lowercase reason otherwise (see
//!   the operator's `RelayError`).
//! - `GET /relay/v1/messages?party=<i>&wait_ms=<n>` with the cluster header:
//!   waits up to `min(n, 25 s)` for messages and returns all that are queued
//!   for party `i` (up to [`MAX_POLL_BYTES`]) as `len u32 (BE) ‖ body`
//!   frames, in arrival order; an empty body when nothing came.
//!
//! # Delivery
//!
//! Messages for one recipient are kept in arrival order, and a node posts to
//! one recipient one message at a time, so the order of each sender →
//! recipient pair holds end to end. Hand-off is **at most once**: a GET
//! removes what it returns, so messages are lost if the response does not
//! reach the node (the protocol then times out and the session is retried).
//! A node sends again only when the relay surely did not queue the message
//! (connection refused, `404`, `429`, `503`), so there are no duplicates. One poller
//! per party is expected; two would split the messages between them.

use std::time::Duration;

/// Path of the relay's only resource.
pub const MESSAGES_PATH: &str = "/relay/v1/messages";
/// Header naming the sending (POST) or polling (GET) party.
pub const PARTY_HEADER: &str = "x-torcus-party";
/// Header naming the cluster, `<namespace>/<cluster>`.
pub const CLUSTER_HEADER: &str = "x-torcus-cluster";
/// Header carrying the sender's leaf certificate (hex DER) in a signed request.
pub const CERTIFICATE_HEADER: &str = "x-torcus-certificate";
/// Header carrying the time a request was signed (Unix milliseconds).
pub const TIME_HEADER: &str = "x-torcus-time";
/// Header carrying the request's signature (hex DER ECDSA P-256 SHA-256 over
/// [`signing_input`]) by the key of [`CERTIFICATE_HEADER`].
pub const SIGNATURE_HEADER: &str = "x-torcus-signature";
/// Header carrying the SHA-256 of a signed POST's body (hex): signed with the
/// request, so the signature is checked before the body is read, and the
/// body is then checked against it.
pub const BODY_DIGEST_HEADER: &str = "x-torcus-body-sha256";
/// Domain of relay request signatures: the key is the node's TLS key, which
/// also signs registry messages (with a domain of their own).
pub const SIGNING_DOMAIN: &[u8] = b"torcus-relay-v1\0";
/// Farthest a signed request's time may be from the relay's clock. A
/// request is remembered for twice that from its arrival (the longest it
/// could still pass), and refused when it comes again.
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// Longest a GET waits for messages.
pub const MAX_WAIT: Duration = Duration::from_secs(25);
/// Largest GET response body; a single frame always fits.
pub const MAX_POLL_BYTES: usize = 2 * crate::envelope::MAX_FRAME;

/// What a signed relay request signs: the domain, then method, cluster,
/// party, raw query and time, each followed by a zero byte, then the
/// SHA-256 of the body ([`body_digest`]; of nothing for a poll).
pub fn signing_input(
    method: &str,
    cluster: &str,
    party: u16,
    query: &str,
    time_ms: u64,
    body_digest: &[u8; 32],
) -> Vec<u8> {
    let (party, time) = (party.to_string(), time_ms.to_string());
    let mut out = SIGNING_DOMAIN.to_vec();
    for part in [method, cluster, party.as_str(), query, time.as_str()] {
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    out.extend_from_slice(body_digest);
    out
}

/// The SHA-256 of a request body.
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(body).into()
}

/// Milliseconds since the Unix epoch by this machine's clock: the time a
/// signed request carries, and the relay's measure of its skew.
pub fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
