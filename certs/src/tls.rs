//! rustls configurations for mutual TLS inside a cluster, and the checks they make.
//!
//! Both sides present a certificate and accept only peers chaining to the trust bundle;
//! nothing else (no system roots, no process-default crypto provider, no TLS 1.2). Which
//! peer it is comes from [`peer_identity`], never from the server name.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{Error, Identity, OffsetDateTime, Result, SecretPem};

/// Verifies that `leaf_pem` (a leaf, optionally followed by intermediates) chains to one of
/// the CAs in `trust_bundle_pem` and is valid at `now`.
///
/// This is the check a [`server_config`] makes of a client certificate, run by the same
/// webpki verifier, so the leaf must also allow clientAuth (every Torcus leaf does).
pub fn verify_leaf(leaf_pem: &str, trust_bundle_pem: &str, now: OffsetDateTime) -> Result<()> {
    let mut chain = crate::certificates(leaf_pem)?.into_iter();
    let end_entity = chain.next().ok_or(Error::NoCertificate)?;
    let intermediates: Vec<_> = chain.collect();
    client_verifier(trust_bundle_pem)?
        .verify_client_cert(&end_entity, &intermediates, crate::unix_time(now)?)
        .map_err(Error::Rejected)?;
    Ok(())
}

/// Like [`verify_leaf`] for one DER leaf without intermediates.
pub(crate) fn verify_leaf_der(leaf_der: &[u8], trust_bundle_pem: &str, now: OffsetDateTime) -> Result<()> {
    client_verifier(trust_bundle_pem)?
        .verify_client_cert(&CertificateDer::from(leaf_der), &[], crate::unix_time(now)?)
        .map_err(Error::Rejected)?;
    Ok(())
}

/// A TLS 1.3 server configuration that requires a client certificate chaining to
/// `trust_bundle_pem`, and presents `cert_chain_pem` (leaf first) with `key`.
pub fn server_config(
    cert_chain_pem: &str,
    key: &SecretPem,
    trust_bundle_pem: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Tls)?
        .with_client_cert_verifier(client_verifier(trust_bundle_pem)?)
        .with_single_cert(crate::certificates(cert_chain_pem)?, private_key(key)?)
        .map_err(Error::Tls)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A TLS 1.3 client configuration that accepts only servers chaining to
/// `trust_bundle_pem`, and authenticates with `cert_chain_pem` (leaf first) and `key`.
///
/// The server name passed when connecting is checked against the server's DNS and IP SANs
/// as usual.
pub fn client_config(
    cert_chain_pem: &str,
    key: &SecretPem,
    trust_bundle_pem: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>> {
    let provider = crate::provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(trust_bundle_pem)?, provider.clone())
        .build()
        .map_err(verifier_error)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Tls)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(crate::certificates(cert_chain_pem)?, private_key(key)?)
        .map_err(Error::Tls)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Like [`client_config`], for a server known by its Torcus identity rather than a name: the
/// server must chain to `trust_bundle_pem` and carry exactly `expected` in its URI SAN. The
/// server name a client connects with is not checked, so a server is reached by its address
/// (a pod IP a certificate may not list yet) and still authenticated as the party it must be.
pub fn client_config_for(
    cert_chain_pem: &str,
    key: &SecretPem,
    trust_bundle_pem: &str,
    expected: &Identity,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>> {
    let provider = crate::provider();
    let verifier = IdentityVerifier { roots: roots(trust_bundle_pem)?, expected: expected.clone(), provider };
    let mut config = ClientConfig::builder_with_provider(verifier.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(crate::certificates(cert_chain_pem)?, private_key(key)?)
        .map_err(Error::Tls)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Accepts a server certificate that chains to the roots (webpki, as [`client_config`]) and
/// names exactly the expected identity; the server name is not used.
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Identity,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match peer_identity(end_entity) {
            Ok(identity) if identity == self.expected => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The Torcus identity in a peer's end-entity certificate, the first of
/// `Connection::peer_certificates()`.
///
/// Call only on a certificate the handshake has verified: this parses, it does not verify.
pub fn peer_identity(end_entity_der: &[u8]) -> Result<Identity> {
    crate::inspect_der(end_entity_der)?.identity.ok_or(Error::NoIdentity)
}

fn client_verifier(trust_bundle_pem: &str) -> Result<Arc<dyn ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(roots(trust_bundle_pem)?, crate::provider())
        .build()
        .map_err(verifier_error)
}

fn roots(trust_bundle_pem: &str) -> Result<Arc<RootCertStore>> {
    let certs = match crate::certificates(trust_bundle_pem) {
        Err(Error::NoCertificate) => return Err(Error::EmptyBundle),
        certs => certs?,
    };
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(Error::Tls)?;
    }
    Ok(Arc::new(roots))
}

fn private_key(key: &SecretPem) -> Result<PrivateKeyDer<'static>> {
    Ok(PrivateKeyDer::from_pem_slice(key.expose().as_bytes())?)
}

fn verifier_error(error: VerifierBuilderError) -> Error {
    match error {
        VerifierBuilderError::NoRootAnchors => Error::EmptyBundle,
        other => Error::Tls(rustls::Error::General(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{CertificateError, Connection, ProtocolVersion};

    use super::*;
    use crate::test_util::{ca, dns, issue_node, node, operator};
    use crate::{CaRenewal, CertificateAuthority, Duration, IssuedCertificate, TrustBundle};

    const ALPN: &[&[u8]] = &[b"torcus/1"];

    /// Which side of a handshake failed.
    #[derive(Debug, PartialEq)]
    enum Side {
        Client,
        Server,
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn as_server(leaf: &IssuedCertificate, bundle: &str) -> Arc<ServerConfig> {
        server_config(&leaf.cert_pem, &leaf.key_pem, bundle, ALPN).unwrap()
    }

    fn as_client(leaf: &IssuedCertificate, bundle: &str) -> Arc<ClientConfig> {
        client_config(&leaf.cert_pem, &leaf.key_pem, bundle, ALPN).unwrap()
    }

    /// Runs a handshake in memory, shuttling bytes between the two ends until both are done
    /// or one fails. Validity is checked against the system clock, as in production.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        server_name: &str,
    ) -> Result<(Connection, Connection), (Side, rustls::Error)> {
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let mut client = Connection::Client(rustls::ClientConnection::new(client, name).unwrap());
        let mut server = Connection::Server(rustls::ServerConnection::new(server).unwrap());
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok((client, server));
            }
            shuttle(&mut client, &mut server).map_err(|e| (Side::Server, e))?;
            shuttle(&mut server, &mut client).map_err(|e| (Side::Client, e))?;
        }
        panic!("handshake stalled");
    }

    /// Moves everything `from` has to send into `to`, and has `to` process it.
    fn shuttle(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut bytes = &bytes[..];
        while !bytes.is_empty() {
            to.read_tls(&mut bytes).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    fn end_entity(cert_chain_pem: &str) -> CertificateDer<'static> {
        crate::first_certificate(cert_chain_pem).unwrap()
    }

    fn peer(conn: &Connection) -> Identity {
        peer_identity(&conn.peer_certificates().unwrap()[0]).unwrap()
    }

    /// A CA that is not ours, with its own name.
    fn other_ca() -> CertificateAuthority {
        CertificateAuthority::generate("someone else's CA", Duration::days(365), now()).unwrap()
    }

    /// Asserts that `side` refused its peer's certificate with `expected`.
    fn refused(
        result: Result<(Connection, Connection), (Side, rustls::Error)>,
        side: Side,
        expected: CertificateError,
    ) {
        match result {
            Err((s, rustls::Error::InvalidCertificate(e))) if s == side && e == expected => {}
            Err(other) => panic!("expected {side:?} to fail with {expected:?}, got {other:?}"),
            Ok(_) => panic!("handshake succeeded"),
        }
    }

    #[test]
    fn nodes_of_one_ca_handshake_and_learn_each_others_identity() {
        let ca = ca(now());
        let (a, b) = (issue_node(&ca, 0, now()), issue_node(&ca, 1, now()));
        let (client, server) = handshake(as_client(&a, ca.cert_pem()), as_server(&b, ca.cert_pem()), &dns(1)).unwrap();
        assert_eq!(peer(&server), node(0));
        assert_eq!(peer(&client), node(1));
        assert_eq!(client.alpn_protocol(), Some(&b"torcus/1"[..]));
        assert_eq!(server.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    }

    #[test]
    fn operator_connects_as_client_only() {
        let ca = ca(now());
        let op = ca.issue(&operator(), &[], &[], Duration::hours(1), now()).unwrap();
        let n = issue_node(&ca, 0, now());
        let (_, server) = handshake(as_client(&op, ca.cert_pem()), as_server(&n, ca.cert_pem()), &dns(0)).unwrap();
        assert_eq!(peer(&server), operator());

        // Its certificate lacks serverAuth, so it cannot pose as a node's server.
        let op_named = ca.issue(&operator(), &[dns(0)], &[], Duration::hours(1), now()).unwrap();
        let result = handshake(as_client(&n, ca.cert_pem()), as_server(&op_named, ca.cert_pem()), &dns(0));
        assert!(
            matches!(
                result,
                Err((
                    Side::Client,
                    rustls::Error::InvalidCertificate(
                        CertificateError::InvalidPurposeContext { .. } | CertificateError::InvalidPurpose
                    )
                ))
            ),
            "{result:?}"
        );
    }

    #[test]
    fn a_server_known_by_identity_is_reached_by_any_name_and_must_be_that_party() {
        let ca = ca(now());
        let op = ca.issue(&operator(), &[], &[], Duration::hours(1), now()).unwrap();
        let (one, two) = (issue_node(&ca, 1, now()), issue_node(&ca, 2, now()));
        let to = |party: u16, bundle: &str| {
            client_config_for(&op.cert_pem, &op.key_pem, bundle, &node(party), ALPN).unwrap()
        };
        // Reached by an address the certificate does not list: the identity is what counts.
        let (client, server) = handshake(to(1, ca.cert_pem()), as_server(&one, ca.cert_pem()), "10.9.8.7").unwrap();
        assert_eq!(peer(&client), node(1));
        assert_eq!(peer(&server), operator());
        // Another party of the same cluster is not the one asked for.
        refused(
            handshake(to(1, ca.cert_pem()), as_server(&two, ca.cert_pem()), &dns(1)),
            Side::Client,
            CertificateError::NotValidForName,
        );
        // Party 1 of another CA is not ours.
        let theirs = other_ca();
        let impostor = issue_node(&theirs, 1, now());
        let result = handshake(to(1, ca.cert_pem()), as_server(&impostor, theirs.cert_pem()), &dns(1));
        assert!(matches!(result, Err((Side::Client, rustls::Error::InvalidCertificate(_)))), "{result:?}");
    }

    #[test]
    fn server_refuses_client_from_another_ca() {
        let (ours, theirs) = (ca(now()), other_ca());
        let intruder = issue_node(&theirs, 0, now());
        let n = issue_node(&ours, 1, now());
        // The intruder trusts our CA, so only the server's check stands in its way.
        let result = handshake(as_client(&intruder, ours.cert_pem()), as_server(&n, ours.cert_pem()), &dns(1));
        refused(result, Side::Server, CertificateError::UnknownIssuer);
    }

    #[test]
    fn client_refuses_server_from_another_ca() {
        let (ours, theirs) = (ca(now()), other_ca());
        let n = issue_node(&ours, 0, now());
        let intruder = issue_node(&theirs, 1, now());
        let result = handshake(as_client(&n, ours.cert_pem()), as_server(&intruder, ours.cert_pem()), &dns(1));
        refused(result, Side::Client, CertificateError::UnknownIssuer);
    }

    #[test]
    fn impostor_ca_with_our_name_is_refused() {
        // Same subject as our CA, so path building finds it by name and fails on the signature.
        let (ours, impostor) = (ca(now()), ca(now()));
        let n = issue_node(&ours, 0, now());
        let fake = issue_node(&impostor, 1, now());
        let err = verify_leaf(&fake.cert_pem, ours.cert_pem(), now()).unwrap_err();
        assert!(
            matches!(err, Error::Rejected(rustls::Error::InvalidCertificate(CertificateError::BadSignature))),
            "{err}"
        );
        let result = handshake(as_client(&fake, ours.cert_pem()), as_server(&n, ours.cert_pem()), &dns(0));
        refused(result, Side::Server, CertificateError::BadSignature);
        let result = handshake(as_client(&n, ours.cert_pem()), as_server(&fake, ours.cert_pem()), &dns(1));
        refused(result, Side::Client, CertificateError::BadSignature);
    }

    #[test]
    fn server_requires_a_client_certificate() {
        let ca = ca(now());
        let n = issue_node(&ca, 1, now());
        let roots = roots(ca.cert_pem()).unwrap();
        let anonymous = ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let result = handshake(Arc::new(anonymous), as_server(&n, ca.cert_pem()), &dns(1));
        assert!(matches!(result, Err((Side::Server, rustls::Error::NoCertificatesPresented))), "{result:?}");
    }

    #[test]
    fn client_checks_the_server_name() {
        let ca = ca(now());
        let (a, b) = (issue_node(&ca, 0, now()), issue_node(&ca, 1, now()));
        let result = handshake(as_client(&a, ca.cert_pem()), as_server(&b, ca.cert_pem()), &dns(2));
        assert!(matches!(result, Err((Side::Client, rustls::Error::InvalidCertificate(_)))), "{result:?}");
    }

    #[test]
    fn handshake_across_a_ca_roll() {
        let old =
            CertificateAuthority::generate("torcus demo CA", Duration::days(365), now() - Duration::days(340)).unwrap();
        let old_leaf = issue_node(&old, 0, now() - Duration::days(1));
        let CaRenewal::Renewed { ca: new, bundle } =
            crate::renew_ca(&old, &TrustBundle::single(old.cert_pem()), Duration::days(365), Duration::days(30), now())
                .unwrap()
        else {
            panic!("not renewed");
        };
        let new_leaf = issue_node(&new, 1, now());
        let bundle = bundle.to_pem();

        let (client, server) =
            handshake(as_client(&old_leaf, &bundle), as_server(&new_leaf, &bundle), &dns(1)).unwrap();
        assert_eq!((peer(&client), peer(&server)), (node(1), node(0)));
        let (client, server) =
            handshake(as_client(&new_leaf, &bundle), as_server(&old_leaf, &bundle), &dns(0)).unwrap();
        assert_eq!((peer(&client), peer(&server)), (node(0), node(1)));

        // A node that has not received the rolled bundle yet refuses the new CA's leaves;
        // this is why the bundle is distributed before the new CA issues.
        let result = handshake(as_client(&new_leaf, &bundle), as_server(&old_leaf, old.cert_pem()), &dns(0));
        assert!(matches!(result, Err((Side::Server, rustls::Error::InvalidCertificate(_)))), "{result:?}");
    }

    #[test]
    fn verify_leaf_accepts_own_ca_and_refuses_another() {
        let (ours, theirs) = (ca(now()), other_ca());
        let leaf = issue_node(&ours, 0, now());
        verify_leaf(&leaf.cert_pem, ours.cert_pem(), now()).unwrap();
        let chain = format!("{}{}", leaf.cert_pem, ours.cert_pem());
        verify_leaf(&chain, ours.cert_pem(), now()).unwrap();

        let err = verify_leaf(&issue_node(&theirs, 0, now()).cert_pem, ours.cert_pem(), now()).unwrap_err();
        assert!(
            matches!(err, Error::Rejected(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))),
            "{err}"
        );
    }

    #[test]
    fn verify_leaf_refuses_a_ca_as_leaf_and_an_empty_bundle() {
        let ca = ca(now());
        assert!(matches!(verify_leaf(ca.cert_pem(), ca.cert_pem(), now()), Err(Error::Rejected(_))));
        let leaf = issue_node(&ca, 0, now());
        assert!(matches!(verify_leaf(&leaf.cert_pem, "", now()), Err(Error::EmptyBundle)));
    }

    /// `leaf` (of `ca`) is refused by `verify_leaf` with an error that
    /// `is` recognises and whose text says `says`; and in a handshake, when
    /// it is the server's certificate (`served`) or the client's, the other
    /// side refuses it the same way.
    fn refused_for_its_time(
        ca: &CertificateAuthority,
        leaf: &IssuedCertificate,
        is: fn(&CertificateError) -> bool,
        says: &str,
        served: bool,
    ) {
        let err = verify_leaf(&leaf.cert_pem, ca.cert_pem(), now()).unwrap_err();
        assert!(matches!(&err, Error::Rejected(rustls::Error::InvalidCertificate(e)) if is(e)), "{err:?}");
        assert!(err.to_string().contains(says), "{err}");
        let fresh = issue_node(ca, 1, now());
        let (result, refuser) = if served {
            (handshake(as_client(&fresh, ca.cert_pem()), as_server(leaf, ca.cert_pem()), &dns(0)), Side::Client)
        } else {
            (handshake(as_client(leaf, ca.cert_pem()), as_server(&fresh, ca.cert_pem()), &dns(1)), Side::Server)
        };
        assert!(
            matches!(&result, Err((side, rustls::Error::InvalidCertificate(e))) if *side == refuser && is(e)),
            "{result:?}"
        );
    }

    #[test]
    fn expired_certificate_is_refused() {
        let ca =
            CertificateAuthority::generate("torcus demo CA", Duration::days(365), now() - Duration::days(100)).unwrap();
        let leaf = ca.issue(&node(0), &[dns(0)], &[], Duration::days(30), now() - Duration::days(60)).unwrap();
        let expired =
            |e: &CertificateError| matches!(e, CertificateError::Expired | CertificateError::ExpiredContext { .. });
        refused_for_its_time(&ca, &leaf, expired, "expired", true);
    }

    #[test]
    fn not_yet_valid_certificate_is_refused() {
        let ca = ca(now());
        let leaf = ca.issue(&node(0), &[dns(0)], &[], Duration::days(30), now() + Duration::days(1)).unwrap();
        let early = |e: &CertificateError| {
            matches!(e, CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. })
        };
        refused_for_its_time(&ca, &leaf, early, "not valid yet", false);
    }

    #[test]
    fn peer_identity_round_trips() {
        let ca = ca(now());
        for index in [0, 5, 1000] {
            let leaf = issue_node(&ca, index, now());
            assert_eq!(peer_identity(&end_entity(&leaf.cert_pem)).unwrap(), node(index));
        }
        let op = ca.issue(&operator(), &[], &[], Duration::hours(1), now()).unwrap();
        assert_eq!(peer_identity(&end_entity(&op.cert_pem)).unwrap(), operator());
        assert!(matches!(peer_identity(&end_entity(ca.cert_pem())), Err(Error::NoIdentity)));
    }

    #[test]
    fn configs_refuse_a_key_that_does_not_match() {
        let ca = ca(now());
        let (a, b) = (issue_node(&ca, 0, now()), issue_node(&ca, 1, now()));
        assert!(server_config(&a.cert_pem, &b.key_pem, ca.cert_pem(), ALPN).is_err());
        assert!(client_config(&a.cert_pem, &b.key_pem, ca.cert_pem(), ALPN).is_err());
        let no_key = SecretPem::new(String::new());
        assert!(matches!(server_config(&a.cert_pem, &no_key, ca.cert_pem(), ALPN), Err(Error::Pem(_))));
        assert!(matches!(client_config(&a.cert_pem, &a.key_pem, "", ALPN), Err(Error::EmptyBundle)));
    }
}
