//! Reading facts out of a certificate: validity, identity, names; and deciding renewal.
//!
//! This is parsing, not verification: nothing here checks a signature. Use
//! [`verify_leaf`](crate::verify_leaf) or a TLS handshake for that.

use std::fmt::Write as _;
use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;

use crate::{Duration, Error, Identity, OffsetDateTime, Result};

/// Parsed facts of one certificate.
#[derive(Clone, Debug)]
pub struct CertificateInfo {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The Torcus identity from the URI SAN, if the certificate has one.
    pub identity: Option<Identity>,
    /// Whether basic constraints say `CA:true`.
    pub is_ca: bool,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP address SANs.
    pub ips: Vec<IpAddr>,
    /// The subject distinguished name, e.g. `CN=party-2.demo.default`.
    pub subject: String,
    /// The serial number in lowercase hex, without separators.
    pub serial_hex: String,
}

/// The SHA-256 fingerprint of every certificate in `pem`, each as
/// `sha256:<lowercase hex of the DER>`: what a CA is pinned by.
///
/// Every certificate either PEM reader here would find is listed (the
/// strict one, which [`inspect`] and the CA use, and the lenient one of
/// [`crate::TrustBundle::from_pem`]), and text that either refuses is an
/// error: whoever checks a pin must see every certificate that could be
/// trusted, however the text is made.
pub fn fingerprints(pem: &str) -> Result<Vec<String>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let print = |der: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)));
    let mut prints = Vec::new();
    for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        prints.push(print(der?.as_ref()));
    }
    for block in crate::TrustBundle::from_pem(pem)?.blocks() {
        let der = print(crate::first_certificate(block)?.as_ref());
        if !prints.contains(&der) {
            prints.push(der);
        }
    }
    Ok(prints)
}

/// Parses the first certificate in `cert_pem`.
pub fn inspect(cert_pem: &str) -> Result<CertificateInfo> {
    inspect_der(&crate::first_certificate(cert_pem)?)
}

/// Parses a DER certificate, such as the first of `Connection::peer_certificates()`.
///
/// Fails on a certificate with more than one Torcus identity URI; URIs that are not
/// Torcus identities are ignored.
pub fn inspect_der(der: &[u8]) -> Result<CertificateInfo> {
    let cert = parse(der)?;
    let mut identity = None;
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    let sans = cert.subject_alternative_name()?;
    for name in sans.iter().flat_map(|ext| &ext.value.general_names) {
        match name {
            GeneralName::URI(uri) => {
                if let Ok(id) = Identity::from_uri(uri)
                    && identity.replace(id).is_some()
                {
                    return Err(Error::AmbiguousIdentity);
                }
            }
            GeneralName::DNSName(name) => dns_names.push((*name).to_owned()),
            GeneralName::IPAddress(bytes) => ips.push(ip_from_bytes(bytes)?),
            _ => {}
        }
    }
    let serial_hex = cert.raw_serial().iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}"); // writing to a String cannot fail
        hex
    });
    Ok(CertificateInfo {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        identity,
        is_ca: cert.is_ca(),
        dns_names,
        ips,
        subject: cert.subject().to_string(),
        serial_hex,
    })
}

/// True when `now` is within `renew_before` of the certificate's expiry or past it, or
/// before the start of its validity.
pub fn needs_renewal(cert_pem: &str, renew_before: Duration, now: OffsetDateTime) -> Result<bool> {
    let info = inspect(cert_pem)?;
    Ok(now < info.not_before || now >= info.not_after - renew_before)
}

/// Parses exactly one DER certificate (no trailing bytes).
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(X509Error::InvalidCertificate.into()),
        Err(x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e)) => Err(e.into()),
        Err(x509_parser::nom::Err::Incomplete(_)) => Err(X509Error::InvalidCertificate.into()),
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ok(v4.into())
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ok(v6.into())
    } else {
        Err(X509Error::InvalidExtensions.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use crate::test_util::{ca, dns, issue_node, node, operator, t0};

    #[test]
    fn identity_round_trips_through_issue_and_inspect() {
        let ca = ca(t0());
        for index in [0, 2, 7, u16::MAX] {
            let leaf = issue_node(&ca, index, t0());
            let info = inspect(&leaf.cert_pem).unwrap();
            let id = info.identity.unwrap();
            assert_eq!(id, node(index));
            assert_eq!(id.role, Role::Node { party_index: index });
            assert_eq!((&*id.namespace, &*id.cluster), ("default", "demo"));
            assert_eq!(info.dns_names, [dns(index)]);
        }
        let op = ca.issue(&operator(), &[], &[], Duration::days(1), t0()).unwrap();
        assert_eq!(inspect(&op.cert_pem).unwrap().identity, Some(operator()));
    }

    #[test]
    fn inspect_der_matches_inspect() {
        let ca = ca(t0());
        let leaf = issue_node(&ca, 3, t0());
        let der = crate::first_certificate(&leaf.cert_pem).unwrap();
        let a = inspect(&leaf.cert_pem).unwrap();
        let b = inspect_der(&der).unwrap();
        assert_eq!(a.identity, b.identity);
        assert_eq!(a.serial_hex, b.serial_hex);
        assert_eq!(a.not_after, b.not_after);
    }

    #[test]
    fn inspect_reads_the_first_certificate() {
        let ca = ca(t0());
        let leaf = issue_node(&ca, 1, t0());
        let chain = format!("{}{}", leaf.cert_pem, ca.cert_pem());
        assert_eq!(inspect(&chain).unwrap().identity, Some(node(1)));
    }

    #[test]
    fn inspect_refuses_garbage() {
        assert!(matches!(inspect(""), Err(Error::NoCertificate)));
        assert!(matches!(inspect("hello"), Err(Error::NoCertificate)));
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(inspect(bad), Err(Error::X509(_))));
        assert!(inspect_der(b"\x30\x03\x02\x01").is_err());
        let der = crate::first_certificate(ca(t0()).cert_pem()).unwrap();
        assert!(inspect_der(&der[..der.len() - 1]).is_err());
        let trailing = [der.as_ref(), b"\0"].concat();
        assert!(inspect_der(&trailing).is_err());
    }

    #[test]
    fn inspect_refuses_two_identities() {
        // Only a CA could mint this; inspect must still not pick one of the two.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names =
            [node(1), node(2)].iter().map(|id| rcgen::SanType::URI(id.uri().try_into().unwrap())).collect();
        let cert = params.self_signed(&ca_key).unwrap();
        assert!(matches!(inspect_der(cert.der()), Err(Error::AmbiguousIdentity)));
    }

    #[test]
    fn needs_renewal_window() {
        let ca = ca(t0());
        let leaf = issue_node(&ca, 0, t0()); // valid 30 days
        let window = Duration::days(10);
        let renew = |at| needs_renewal(&leaf.cert_pem, window, at).unwrap();
        assert!(!renew(t0()));
        assert!(!renew(t0() + Duration::days(19)));
        assert!(renew(t0() + Duration::days(20)));
        assert!(renew(t0() + Duration::days(25)));
        assert!(renew(t0() + Duration::days(30)));
        assert!(renew(t0() + Duration::days(400)));
        assert!(renew(t0() - Duration::hours(1)), "not yet valid");
    }
}
