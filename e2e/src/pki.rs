//! Certificates and keys of the local control plane: a CA, the API server's
//! serving certificate, an admin client certificate (group
//! `system:masters`), the API server's client certificate for kubelets, a
//! real node's kubelet client certificate (`system:node:<name>`) and the
//! service-account signing key. Made fresh for every control plane; never
//! used for anything but loopback and the sandbox's own network namespace.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Name of the sandbox's real node, the subject of its kubelet's
/// certificate (`system:node:<name>` in `system:nodes`, what the Node
/// authorizer and NodeRestriction expect).
pub const REAL_NODE: &str = "torcus-real";

/// Paths of the files [`write`] creates.
#[derive(Clone, Debug)]
pub struct Files {
    /// CA certificate (also the client CA).
    pub ca_crt: PathBuf,
    /// API server serving certificate and key.
    pub server_crt: PathBuf,
    /// Key of `server_crt`.
    pub server_key: PathBuf,
    /// Service-account token signing key (private, PKCS#8).
    pub sa_key: PathBuf,
    /// Service-account token verification key (public).
    pub sa_pub: PathBuf,
    /// The API server's client certificate for kubelets (logs, exec).
    pub kubelet_client_crt: PathBuf,
    /// Key of `kubelet_client_crt`.
    pub kubelet_client_key: PathBuf,
    /// Client certificate PEM of the real node's kubelet ([`REAL_NODE`]).
    pub node_crt: String,
    /// Key PEM of `node_crt`.
    pub node_key: String,
    /// Admin client certificate PEM.
    pub admin_crt: String,
    /// Admin client key PEM.
    pub admin_key: String,
    /// CA PEM.
    pub ca_pem: String,
}

/// Generates the control plane's PKI into `dir`, the API server's
/// certificate valid for `address` too.
pub fn write(dir: &Path, address: IpAddr) -> anyhow::Result<Files> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("torcus-local-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ])?;
    server.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse()?));
    server.subject_alt_names.push(SanType::IpAddress("10.0.0.1".parse()?));
    if !address.is_loopback() {
        server.subject_alt_names.push(SanType::IpAddress(address));
    }
    server.distinguished_name = name("kube-apiserver", None);
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::default();
    admin.distinguished_name = name("torcus-admin", Some("system:masters"));
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    let kubelet_client_key = KeyPair::generate()?;
    let mut kubelet_client = CertificateParams::default();
    kubelet_client.distinguished_name = name("kube-apiserver-kubelet-client", Some("system:masters"));
    kubelet_client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let kubelet_client_cert = kubelet_client.signed_by(&kubelet_client_key, &issuer)?;

    let node_key = KeyPair::generate()?;
    let mut node = CertificateParams::default();
    node.distinguished_name = name(&format!("system:node:{REAL_NODE}"), Some("system:nodes"));
    node.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let node_cert = node.signed_by(&node_key, &issuer)?;

    let sa_key = KeyPair::generate()?;

    let files = Files {
        ca_crt: dir.join("ca.crt"),
        server_crt: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        kubelet_client_crt: dir.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
        node_crt: node_cert.pem(),
        node_key: node_key.serialize_pem(),
        admin_crt: admin_cert.pem(),
        admin_key: admin_key.serialize_pem(),
        ca_pem: ca_cert.pem(),
    };
    let write =
        |path: &Path, text: &str| std::fs::write(path, text).with_context(|| format!("writing {}", path.display()));
    write(&files.ca_crt, &files.ca_pem)?;
    write(&files.server_crt, &server_cert.pem())?;
    write(&files.server_key, &server_key.serialize_pem())?;
    write(&files.sa_key, &sa_key.serialize_pem())?;
    write(&files.sa_pub, &sa_key.public_key_pem())?;
    write(&files.kubelet_client_crt, &kubelet_client_cert.pem())?;
    write(&files.kubelet_client_key, &kubelet_client_key.serialize_pem())?;
    Ok(files)
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}
