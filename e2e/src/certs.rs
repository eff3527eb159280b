//! Key material for a throw-away local control plane: a CA, the API
//! server's serving certificate (valid for loopback and the in-cluster
//! names), and the service-account signing key pair. Generated in-process
//! so the set-up needs no openssl binary.

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
    /// The CA certificate as PEM, for kubeconfigs.
    pub ca_pem: String,
}

/// Writes a fresh CA, a serving certificate and a service-account key pair
/// into `dir`.
pub fn write_pki(dir: &Path) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir)?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "steward-local-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

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

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        ca_pem: ca.pem(),
    };
    std::fs::write(&pki.ca_cert, &pki.ca_pem)?;
    std::fs::write(&pki.server_cert, server_cert.pem())?;
    std::fs::write(&pki.server_key, server_key.serialize_pem())?;
    std::fs::write(&pki.sa_key, sa.serialize_pem())?;
    std::fs::write(&pki.sa_pub, sa.public_key_pem())?;
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
        ] {
            let text = std::fs::read_to_string(p).expect("read");
            assert!(text.starts_with("-----BEGIN"), "{} is not PEM", p.display());
        }
    }
}
