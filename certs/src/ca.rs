//! The cluster CA and the leaf certificates it issues.
//!
//! The CA is kept as PEM (certificate and key) rather than as parsed rcgen objects: that is
//! how it is stored in a Kubernetes Secret, and it makes the type `Clone` and cheap to hold.
//! The key is parsed again for each issuance.

use std::fmt;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use zeroize::Zeroizing;

use crate::identity::Role;
use crate::{Duration, Error, Identity, OffsetDateTime, Result};

/// Allowance for clocks that run behind the issuer's: certificates become valid this long
/// before they are issued.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// A private key in PEM. `Debug` redacts it and `Drop` zeroizes it.
#[derive(Clone)]
pub struct SecretPem(Zeroizing<String>);

impl SecretPem {
    /// Wraps a PEM private key.
    pub fn new(pem: String) -> Self {
        Self(Zeroizing::new(pem))
    }

    /// The PEM text. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// A certificate with its key.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The leaf certificate in PEM.
    pub cert_pem: String,
    /// Its private key in PEM (PKCS#8).
    pub key_pem: SecretPem,
}

/// The cluster CA: ECDSA P-256, self-signed, `CA:true` with path length 0, key usage
/// keyCertSign and cRLSign.
#[derive(Clone, Debug)]
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: SecretPem,
    /// Kept so that a renewed CA gets the same name.
    common_name: String,
    not_after: OffsetDateTime,
}

impl CertificateAuthority {
    /// Generates a new CA valid from `now` (less clock skew) for `validity`.
    pub fn generate(common_name: &str, validity: Duration, now: OffsetDateTime) -> Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.serial_number = Some(random_serial()?);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + validity;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: SecretPem::new(key.serialize_pem()),
            common_name: common_name.to_owned(),
            not_after: params.not_after,
        })
    }

    /// Loads a CA from PEM, e.g. from its Secret.
    ///
    /// Fails if the certificate is not a CA or the key is not the certificate's key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let der = crate::first_certificate(cert_pem)?;
        let cert = crate::inspect::parse(&der)?;
        if !cert.is_ca() {
            return Err(Error::NotCa);
        }
        let key = KeyPair::from_pem(key_pem)?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::KeyMismatch);
        }
        let common_name = match cert.subject().iter_common_name().next() {
            Some(cn) => cn.as_str()?.to_owned(),
            None => String::new(),
        };
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: SecretPem::new(key_pem.to_owned()),
            common_name,
            not_after: cert.validity().not_after.to_datetime(),
        })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key in PEM.
    pub fn key_pem(&self) -> &SecretPem {
        &self.key_pem
    }

    /// The CA's common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues a leaf certificate for `identity` with a fresh ECDSA P-256 key.
    ///
    /// Valid from `now` less clock skew until `now + validity`, but never past the CA's own
    /// expiry. Subject alternative names are the identity URI, `dns_names` and `ips`; the
    /// subject CN is a readable name such as `party-2.demo.default`. Extended key usage is
    /// serverAuth and clientAuth for a node, clientAuth only for the operator.
    pub fn issue(
        &self,
        identity: &Identity,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate> {
        // An identity that does not parse back (e.g. a '/' in the namespace) would be
        // unusable, or worse, read back as someone else.
        let uri = identity.uri();
        if Identity::from_uri(&uri)? != *identity {
            return Err(Error::InvalidIdentity(uri));
        }
        let not_before = now - CLOCK_SKEW;
        let not_after = (now + validity).min(self.not_after);
        if not_after <= not_before {
            return Err(Error::CaExpired(self.not_after));
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&identity.common_name());
        params.serial_number = Some(random_serial()?);
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match identity.role {
            Role::Node { .. } => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        // During a CA roll old and new CA share a subject; the key identifier tells them apart.
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = std::iter::once(Ok(SanType::URI(uri.try_into()?)))
            .chain(dns_names.iter().map(|name| Ok(SanType::DnsName(name.as_str().try_into()?))))
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_>>()?;

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, KeyPair::from_pem(self.key_pem.expose())?)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedCertificate { cert_pem: cert.pem(), key_pem: SecretPem::new(key.serialize_pem()) })
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// A positive random serial of exactly 16 octets, 126 of its bits random
/// (RFC 5280 allows up to 20 octets). The top bit is clear so it is positive and
/// the next one set so DER never shortens it: a zero first octet would be
/// dropped, one time in 128, and the serial would come out 15 octets long.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    crate::provider().secure_random.fill(&mut bytes).map_err(|_| Error::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{ca, issue_node, node, operator, t0};
    use crate::{inspect, verify_leaf};

    #[test]
    fn ca_has_the_expected_shape() {
        let ca = ca(t0());
        let info = inspect(ca.cert_pem()).unwrap();
        assert!(info.is_ca);
        assert_eq!(info.subject, "CN=torcus demo CA");
        assert_eq!(info.not_before, t0() - CLOCK_SKEW);
        assert_eq!(info.not_after, t0() + Duration::days(365));
        assert_eq!(ca.not_after(), info.not_after);
        assert!(info.identity.is_none());

        let der = crate::first_certificate(ca.cert_pem()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert!(cert.public_key().parsed().is_ok());
        assert_eq!(cert.signature_algorithm.algorithm, x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256);
    }

    #[test]
    fn leaf_has_the_expected_shape() {
        let ca = ca(t0());
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let leaf = ca.issue(&node(2), &["demo-2.demo.default.svc".into()], &[ip], Duration::days(30), t0()).unwrap();
        let info = inspect(&leaf.cert_pem).unwrap();
        assert!(!info.is_ca);
        assert_eq!(info.subject, "CN=party-2.demo.default");
        assert_eq!(info.dns_names, ["demo-2.demo.default.svc"]);
        assert_eq!(info.ips, [ip]);
        assert_eq!(info.not_before, t0() - CLOCK_SKEW);
        assert_eq!(info.not_after, t0() + Duration::days(30));
        assert_eq!(info.serial_hex.len(), 32);

        let der = crate::first_certificate(&leaf.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);

        let op = ca.issue(&operator(), &[], &[], Duration::days(1), t0()).unwrap();
        let der = crate::first_certificate(&op.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(inspect(&op.cert_pem).unwrap().subject, "CN=operator.demo.default");
    }

    #[test]
    fn serials_are_always_sixteen_octets_in_der() {
        let ca = ca(t0());
        // Unfixed, one serial in 128 began with a zero octet that DER drops; of
        // 400 certificates, about 96 runs in 100 would have caught one.
        for _ in 0..400 {
            let serial = inspect(&issue_node(&ca, 3, t0()).cert_pem).unwrap().serial_hex;
            assert_eq!(serial.len(), 32, "{serial}");
            assert!(u8::from_str_radix(&serial[..2], 16).unwrap() < 0x80, "{serial} is negative");
        }
    }

    #[test]
    fn serials_are_random() {
        let ca = ca(t0());
        let a = inspect(&issue_node(&ca, 1, t0()).cert_pem).unwrap();
        let b = inspect(&issue_node(&ca, 1, t0()).cert_pem).unwrap();
        assert_ne!(a.serial_hex, b.serial_hex);
    }

    #[test]
    fn leaf_never_outlives_its_ca() {
        let ca = CertificateAuthority::generate("short", Duration::days(10), t0()).unwrap();
        let leaf = ca.issue(&node(0), &[], &[], Duration::days(30), t0()).unwrap();
        assert_eq!(inspect(&leaf.cert_pem).unwrap().not_after, ca.not_after());

        let late = t0() + Duration::days(11);
        assert!(matches!(
            ca.issue(&node(0), &[], &[], Duration::days(30), late),
            Err(Error::CaExpired(t)) if t == ca.not_after()
        ));
    }

    #[test]
    fn issue_refuses_an_identity_that_would_not_parse_back() {
        let ca = ca(t0());
        let mut bad = node(0);
        bad.namespace = "default/mpccluster/other".into();
        assert!(matches!(ca.issue(&bad, &[], &[], Duration::days(1), t0()), Err(Error::InvalidIdentity(_))));
    }

    #[test]
    fn from_pem_round_trips() {
        let ca = ca(t0());
        let loaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem().expose()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_pem().expose(), ca.key_pem().expose());
        assert_eq!(loaded.not_after(), ca.not_after());
        assert_eq!(loaded.common_name(), "torcus demo CA");

        // The reloaded CA issues certificates that verify against the original.
        let leaf = issue_node(&loaded, 0, t0());
        verify_leaf(&leaf.cert_pem, ca.cert_pem(), t0()).unwrap();
    }

    #[test]
    fn from_pem_refuses_a_mismatched_key() {
        let ca = ca(t0());
        let other = crate::test_util::ca(t0());
        assert!(matches!(
            CertificateAuthority::from_pem(ca.cert_pem(), other.key_pem().expose()),
            Err(Error::KeyMismatch)
        ));
    }

    #[test]
    fn from_pem_refuses_a_leaf() {
        let ca = ca(t0());
        let leaf = issue_node(&ca, 0, t0());
        assert!(matches!(CertificateAuthority::from_pem(&leaf.cert_pem, leaf.key_pem.expose()), Err(Error::NotCa)));
    }

    #[test]
    fn from_pem_refuses_garbage() {
        let ca = ca(t0());
        assert!(CertificateAuthority::from_pem("", ca.key_pem().expose()).is_err());
        assert!(CertificateAuthority::from_pem(ca.cert_pem(), "").is_err());
        assert!(CertificateAuthority::from_pem(ca.key_pem().expose(), ca.cert_pem()).is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let ca = ca(t0());
        let leaf = issue_node(&ca, 0, t0());
        assert!(leaf.key_pem.expose().contains("PRIVATE KEY"));
        for debug in
            [format!("{:?}", leaf.key_pem), format!("{leaf:?}"), format!("{ca:?}"), format!("{:#?}", ca.key_pem())]
        {
            assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        }
        assert_eq!(format!("{:?}", leaf.key_pem), "SecretPem(<redacted>)");
    }
}
