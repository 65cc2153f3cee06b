//! Certificates for a Torcus cluster: the cluster CA, node and operator leaf certificates,
//! trust bundles that carry old and new CA through a roll, and rustls configurations for
//! mutual TLS that trust only the cluster CA; and signatures with a leaf's key over messages sent
//! without TLS, verified against the trust bundle.
//!
//! Sans-IO in the quinn sense: nothing here reads the clock or touches the network. Every
//! function that depends on time takes `now`; callers pass `OffsetDateTime::now_utc()`.
//! (The rustls configurations are the exception: a live handshake checks validity against
//! the system clock.)
//!
//! All cryptography goes through rustls's `ring` provider, selected explicitly, so the
//! process-wide default provider never matters.

mod bundle;
mod ca;
mod identity;
mod inspect;
mod sign;
mod tls;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};

pub use crate::bundle::{CaRenewal, TrustBundle, renew_ca};
pub use crate::ca::{CertificateAuthority, IssuedCertificate, SecretPem};
pub use crate::identity::{Identity, Role};
pub use crate::inspect::{CertificateInfo, fingerprints, inspect, inspect_der, needs_renewal};
pub use crate::sign::{sign_with_key, verify_signed, verify_signed_der};
pub use crate::tls::{client_config, client_config_for, peer_identity, server_config, verify_leaf};
pub use rustls;
pub use time::{Duration, OffsetDateTime};

/// Everything that can go wrong handling certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PEM text could not be decoded, or holds no item of the expected kind (e.g. no key).
    #[error("invalid PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),

    /// PEM text holds no certificate.
    #[error("no certificate in PEM")]
    NoCertificate,

    /// A certificate is not valid X.509 DER.
    #[error("invalid certificate: {0}")]
    X509(#[from] x509_parser::error::X509Error),

    /// Generating a key or signing a certificate failed, or a private key could not be loaded.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),

    /// A certificate used as a CA does not have `CA:true`.
    #[error("certificate is not a CA")]
    NotCa,

    /// A private key is not the key of the certificate it came with.
    #[error("private key does not match the certificate")]
    KeyMismatch,

    /// The CA expires before the certificate it was asked to issue would become valid.
    #[error("CA expired at {0}")]
    CaExpired(OffsetDateTime),

    /// A URI (or an identity about to be encoded as one) is not a valid Torcus identity.
    #[error("invalid identity URI {0:?}")]
    InvalidIdentity(String),

    /// A certificate carries no Torcus identity URI.
    #[error("certificate has no torcus identity")]
    NoIdentity,

    /// A certificate carries more than one Torcus identity URI.
    #[error("certificate has more than one torcus identity")]
    AmbiguousIdentity,

    /// A trust bundle holds no certificate.
    #[error("trust bundle is empty")]
    EmptyBundle,

    /// A certificate does not verify against the trust bundle (unknown issuer, expired, ...).
    #[error("certificate rejected: {0}")]
    Rejected(#[source] rustls::Error),

    /// rustls refused to build a configuration (unusable key, key not matching the chain,
    /// unusable trust anchor).
    #[error("invalid TLS configuration: {0}")]
    Tls(#[source] rustls::Error),

    /// A verification time before the Unix epoch.
    #[error("time {0} is before the unix epoch")]
    TimeBeforeEpoch(OffsetDateTime),

    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,

    /// A key or certificate is not ECDSA P-256, the only kind [`sign_with_key`] and
    /// [`verify_signed`] use.
    #[error("key is not an ECDSA P-256 key")]
    UnsupportedKey,

    /// Signing a message failed.
    #[error("signing failed: {0}")]
    Sign(#[source] rustls::Error),

    /// A signature does not verify under the certificate's key.
    #[error("signature does not verify")]
    BadSignature,
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The one crypto provider used for keys, signatures and verification.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in `pem`, in order; other PEM sections are skipped.
fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(Error::NoCertificate);
    }
    Ok(certs)
}

/// The first certificate in `pem`.
fn first_certificate(pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).next().ok_or(Error::NoCertificate)?.map_err(Error::from)
}

fn unix_time(now: OffsetDateTime) -> Result<UnixTime> {
    let secs = u64::try_from(now.unix_timestamp()).map_err(|_| Error::TimeBeforeEpoch(now))?;
    Ok(UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)))
}

#[cfg(test)]
mod test_util {
    //! Fixtures shared by the tests of several modules.

    use crate::{CertificateAuthority, Duration, Identity, IssuedCertificate, OffsetDateTime, Role};

    /// A fixed, recent instant, for tests that do not involve a live handshake.
    pub(crate) fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
    }

    pub(crate) fn node(party_index: u16) -> Identity {
        Identity { namespace: "default".into(), cluster: "demo".into(), role: Role::Node { party_index } }
    }

    pub(crate) fn operator() -> Identity {
        Identity { role: Role::Operator, ..node(0) }
    }

    pub(crate) fn ca(now: OffsetDateTime) -> CertificateAuthority {
        CertificateAuthority::generate("torcus demo CA", Duration::days(365), now).unwrap()
    }

    /// DNS name of a node in the tests; present as a DNS SAN on node certificates.
    pub(crate) fn dns(party_index: u16) -> String {
        format!("demo-{party_index}.demo.default.svc")
    }

    pub(crate) fn issue_node(ca: &CertificateAuthority, party_index: u16, now: OffsetDateTime) -> IssuedCertificate {
        ca.issue(&node(party_index), &[dns(party_index)], &[], Duration::days(30), now).unwrap()
    }
}
