//! Signing small messages with a leaf certificate's key, and verifying them against the
//! cluster's trust bundle, for requests that travel without mutual TLS (e.g. a node's
//! registration with the operator over plain HTTP inside the cluster).
//!
//! The signature is ECDSA P-256 with SHA-256 in the DER form X.509 and TLS use, made and
//! checked with rustls's `ring` provider. Callers must domain-separate their messages (put a
//! fixed, purpose-specific prefix in front) so that a signature made for one purpose can never
//! be replayed for another: the key is the node's TLS key.

use rustls::SignatureScheme;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};

use crate::{Error, Identity, OffsetDateTime, Result, SecretPem};

/// The only signature scheme made and accepted.
const SCHEME: SignatureScheme = SignatureScheme::ECDSA_NISTP256_SHA256;

/// Signs `msg` with `key` (an ECDSA P-256 private key in PEM, PKCS#8 or SEC1, as every Torcus
/// leaf has). Returns the DER-encoded ECDSA signature; it is randomized, so two signatures of
/// one message differ.
pub fn sign_with_key(key: &SecretPem, msg: &[u8]) -> Result<Vec<u8>> {
    let der = PrivateKeyDer::from_pem_slice(key.expose().as_bytes())?;
    let key = rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(|_| Error::UnsupportedKey)?;
    // A P-384 key parses as ECDSA too but offers only its own scheme.
    let signer = key.choose_scheme(&[SCHEME]).ok_or(Error::UnsupportedKey)?;
    signer.sign(msg).map_err(Error::Sign)
}

/// Verifies that `cert_pem` (a leaf, optionally followed by intermediates) chains to
/// `trust_bundle_pem` and is valid at `now` (the check of [`verify_leaf`](crate::verify_leaf)),
/// then that `signature` is its key's ECDSA P-256 SHA-256 signature over `msg`. Returns the
/// Torcus identity the certificate carries; whether it is the expected one is the caller's
/// check.
pub fn verify_signed(
    cert_pem: &str,
    trust_bundle_pem: &str,
    msg: &[u8],
    signature: &[u8],
    now: OffsetDateTime,
) -> Result<Identity> {
    crate::verify_leaf(cert_pem, trust_bundle_pem, now)?;
    verify_key_signature(&crate::first_certificate(cert_pem)?, msg, signature)
}

/// Like [`verify_signed`] for a leaf in DER with no intermediates, as it travels in an HTTP
/// header: it must chain directly to a CA of `trust_bundle_pem`.
pub fn verify_signed_der(
    cert_der: &[u8],
    trust_bundle_pem: &str,
    msg: &[u8],
    signature: &[u8],
    now: OffsetDateTime,
) -> Result<Identity> {
    crate::tls::verify_leaf_der(cert_der, trust_bundle_pem, now)?;
    verify_key_signature(cert_der, msg, signature)
}

/// Checks that `signature` is the ECDSA P-256 SHA-256 signature of `der`'s key over `msg`;
/// returns the certificate's identity. `der` must have been verified already.
fn verify_key_signature(der: &[u8], msg: &[u8], signature: &[u8]) -> Result<Identity> {
    let cert = crate::inspect::parse(der)?;
    let spki = cert.public_key();
    let curve = spki.algorithm.parameters.as_ref().and_then(|params| params.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(Error::UnsupportedKey);
    }
    let provider = crate::provider();
    let algorithm = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == SCHEME)
        .and_then(|(_, algorithms)| algorithms.first())
        .ok_or(Error::UnsupportedKey)?;
    // For an EC key, the subjectPublicKey bits are the uncompressed point ring expects.
    algorithm
        .verify_signature(spki.subject_public_key.data.as_ref(), msg, signature)
        .map_err(|_| Error::BadSignature)?;
    crate::inspect_der(der)?.identity.ok_or(Error::NoIdentity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ca, issue_node, node, operator};
    use crate::{CertificateAuthority, Duration, TrustBundle};

    const MSG: &[u8] = b"torcus-test\0hello";

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn round_trip() {
        let ca = ca(now());
        let leaf = issue_node(&ca, 2, now());
        let sig = sign_with_key(&leaf.key_pem, MSG).unwrap();
        assert_eq!(verify_signed(&leaf.cert_pem, ca.cert_pem(), MSG, &sig, now()).unwrap(), node(2));
        // Randomized, and every signature verifies.
        let again = sign_with_key(&leaf.key_pem, MSG).unwrap();
        assert_ne!(sig, again);
        verify_signed(&leaf.cert_pem, ca.cert_pem(), MSG, &again, now()).unwrap();

        // The operator's client certificate signs too; the caller checks the role.
        let op = ca.issue(&operator(), &[], &[], Duration::hours(1), now()).unwrap();
        let sig = sign_with_key(&op.key_pem, MSG).unwrap();
        assert_eq!(verify_signed(&op.cert_pem, ca.cert_pem(), MSG, &sig, now()).unwrap(), operator());
    }

    #[test]
    fn a_der_leaf_verifies_like_its_pem() {
        let ca = ca(now());
        let leaf = issue_node(&ca, 1, now());
        let der = crate::first_certificate(&leaf.cert_pem).unwrap();
        let sig = sign_with_key(&leaf.key_pem, MSG).unwrap();
        assert_eq!(verify_signed_der(&der, ca.cert_pem(), MSG, &sig, now()).unwrap(), node(1));
        assert!(matches!(verify_signed_der(&der, ca.cert_pem(), b"other", &sig, now()), Err(Error::BadSignature)));
        let other = CertificateAuthority::generate("another CA", Duration::days(1), now()).unwrap();
        assert!(verify_signed_der(&der, other.cert_pem(), MSG, &sig, now()).is_err(), "another CA");
    }

    #[test]
    fn tampered_message_or_signature_is_refused() {
        let ca = ca(now());
        let leaf = issue_node(&ca, 0, now());
        let sig = sign_with_key(&leaf.key_pem, MSG).unwrap();
        let mut tampered = MSG.to_vec();
        tampered[MSG.len() - 1] ^= 1;
        assert!(matches!(
            verify_signed(&leaf.cert_pem, ca.cert_pem(), &tampered, &sig, now()),
            Err(Error::BadSignature)
        ));
        let mut bad_sig = sig.clone();
        let last = bad_sig.len() - 1;
        bad_sig[last] ^= 1;
        assert!(matches!(verify_signed(&leaf.cert_pem, ca.cert_pem(), MSG, &bad_sig, now()), Err(Error::BadSignature)));
        assert!(matches!(verify_signed(&leaf.cert_pem, ca.cert_pem(), MSG, &[], now()), Err(Error::BadSignature)));
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let ca = ca(now());
        let (a, b) = (issue_node(&ca, 0, now()), issue_node(&ca, 1, now()));
        // b signs, but presents a's (valid) certificate.
        let sig = sign_with_key(&b.key_pem, MSG).unwrap();
        assert!(matches!(verify_signed(&a.cert_pem, ca.cert_pem(), MSG, &sig, now()), Err(Error::BadSignature)));
    }

    #[test]
    fn certificate_from_another_ca_is_refused() {
        let (ours, theirs) = (ca(now()), CertificateAuthority::generate("other", Duration::days(1), now()).unwrap());
        let intruder = issue_node(&theirs, 0, now());
        let sig = sign_with_key(&intruder.key_pem, MSG).unwrap();
        assert!(matches!(
            verify_signed(&intruder.cert_pem, ours.cert_pem(), MSG, &sig, now()),
            Err(Error::Rejected(_))
        ));
        // ... but accepted once its CA is in the bundle, as during a roll.
        let bundle = TrustBundle::single(ours.cert_pem()).rolled(theirs.cert_pem(), now()).unwrap();
        verify_signed(&intruder.cert_pem, &bundle.to_pem(), MSG, &sig, now()).unwrap();
    }

    #[test]
    fn expired_certificate_is_refused() {
        let past = now() - Duration::days(60);
        let ca = ca(past);
        let leaf = ca.issue(&node(0), &[], &[], Duration::days(30), past).unwrap();
        let sig = sign_with_key(&leaf.key_pem, MSG).unwrap();
        assert!(matches!(verify_signed(&leaf.cert_pem, ca.cert_pem(), MSG, &sig, now()), Err(Error::Rejected(_))));
    }

    #[test]
    fn unusable_keys_are_refused() {
        assert!(matches!(sign_with_key(&SecretPem::new(String::new()), MSG), Err(Error::Pem(_))));
        let ca = ca(now());
        // A certificate is not a key.
        assert!(sign_with_key(&SecretPem::new(ca.cert_pem().to_owned()), MSG).is_err());
        // An Ed25519 key is a key, but not one this scheme signs with.
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(matches!(sign_with_key(&SecretPem::new(ed.serialize_pem()), MSG), Err(Error::UnsupportedKey)));
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(sign_with_key(&SecretPem::new(p384.serialize_pem()), MSG), Err(Error::UnsupportedKey)));
    }
}
