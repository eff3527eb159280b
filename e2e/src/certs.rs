//! Key material for a throw-away local control plane: a CA, the API
//! server's serving certificate (valid for loopback and the in-cluster
//! names), the service-account signing key pair, and the aggregation
//! layer's pair: a front-proxy CA and the client certificate
//! (`front-proxy-client`) the API server presents when it proxies a
//! request to an extension API server such as KEDA's metrics server.
//! Generated in-process so the set-up needs no openssl binary.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

/// Where [`write_pki`] put each file.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    /// The CA extension API servers trust for the aggregator's proxied
    /// requests (`--requestheader-client-ca-file`).
    pub front_proxy_ca: PathBuf,
    /// The aggregator's client certificate and key
    /// (`--proxy-client-cert-file`, `--proxy-client-key-file`), common
    /// name [`FRONT_PROXY_CLIENT`].
    pub proxy_client_cert: PathBuf,
    pub proxy_client_key: PathBuf,
    /// The CA certificate as PEM, for kubeconfigs.
    pub ca_pem: String,
}

/// The common name of the aggregator's client certificate; the only name
/// `--requestheader-allowed-names` allows.
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// A fresh self-signed CA named `common_name`, able to sign certificates.
pub fn new_ca(common_name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// Writes a fresh CA, a serving certificate, a service-account key pair and
/// the front-proxy CA with its client certificate into `dir`.
pub fn write_pki(dir: &Path) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir)?;

    let ca = new_ca("steward-local-ca")?;

    let mut server = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;

    let sa = KeyPair::generate()?;

    // A CA of its own, as kubeadm does: a client certificate of the main CA
    // must not be able to assert X-Remote-User to an extension API server.
    let fp_ca = new_ca("steward-local-front-proxy-ca")?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, FRONT_PROXY_CLIENT);
    client.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate()?;
    let client_cert = client.signed_by(&client_key, &fp_ca)?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        front_proxy_ca: dir.join("front-proxy-ca.crt"),
        proxy_client_cert: dir.join("front-proxy-client.crt"),
        proxy_client_key: dir.join("front-proxy-client.key"),
        ca_pem: ca.pem(),
    };
    std::fs::write(&pki.ca_cert, &pki.ca_pem)?;
    std::fs::write(&pki.server_cert, server_cert.pem())?;
    std::fs::write(&pki.server_key, server_key.serialize_pem())?;
    std::fs::write(&pki.sa_key, sa.serialize_pem())?;
    std::fs::write(&pki.sa_pub, sa.public_key_pem())?;
    std::fs::write(&pki.front_proxy_ca, fp_ca.pem())?;
    std::fs::write(&pki.proxy_client_cert, client_cert.pem())?;
    std::fs::write(&pki.proxy_client_key, client_key.serialize_pem())?;
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_pki_makes_pem_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = write_pki(dir.path()).expect("pki");
        for p in [
            &pki.ca_cert,
            &pki.server_cert,
            &pki.server_key,
            &pki.sa_key,
            &pki.sa_pub,
            &pki.front_proxy_ca,
            &pki.proxy_client_cert,
            &pki.proxy_client_key,
        ] {
            let text = std::fs::read_to_string(p).expect("read");
            assert!(text.starts_with("-----BEGIN"), "{} is not PEM", p.display());
        }
    }
}
