//! The server's credentials, kept under the state directory:
//! - `ca.crt`/`ca.key`: a self-signed CA, generated on first start and kept, so kubeconfigs
//!   handed out earlier keep working;
//! - `server.crt`: the serving certificate, issued by that CA at every start for the
//!   addresses the server listens on (a different `--listen` needs no manual step);
//! - `admin.token`: the admin bearer token;
//! - `kubeconfig`: cluster (CA data + URL), user (token) and context, mode 0600.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use rand::RngExt;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Name of the cluster, user and context in the generated kubeconfig.
pub const CONTEXT_NAME: &str = "cellmesh-local";

/// What the server needs to serve TLS and authenticate the admin.
pub struct Credentials {
    pub ca_pem: String,
    pub tls: Arc<rustls::ServerConfig>,
    pub admin_token: String,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "cellmesh-local-ca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents)?;
    // `mode` applies only when creating: tighten files left by older versions too.
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

/// Loads the CA (creating it on first start).
fn load_or_create_ca(state_dir: &Path) -> anyhow::Result<(String, KeyPair)> {
    let cert_path = state_dir.join("ca.crt");
    let key_path = state_dir.join("ca.key");
    if cert_path.is_file() && key_path.is_file() {
        let cert = fs::read_to_string(&cert_path)?;
        let key = KeyPair::from_pem(&fs::read_to_string(&key_path)?)
            .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
        return Ok((cert, key));
    }
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    fs::write(&cert_path, cert.pem())?;
    tracing::info!(path = %cert_path.display(), "generated a new cluster CA");
    Ok((cert.pem(), key))
}

/// The names a serving certificate covers: loopback names plus the listen address.
fn serving_names(listen: SocketAddr) -> Vec<SanType> {
    let mut names = vec![
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress("::1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))),
    ];
    if !listen.ip().is_unspecified() && !names.contains(&SanType::IpAddress(listen.ip())) {
        names.push(SanType::IpAddress(listen.ip()));
    }
    for dns in [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
    ] {
        if let Ok(name) = dns.try_into() {
            names.push(SanType::DnsName(name));
        }
    }
    names
}

/// Loads or creates the CA and admin token, issues a serving certificate for `listen`,
/// and writes the kubeconfig pointing at `server_url`.
pub fn prepare(
    state_dir: &Path,
    listen: SocketAddr,
    server_url: &str,
) -> anyhow::Result<Credentials> {
    fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let (ca_pem, ca_key) = load_or_create_ca(state_dir)?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "cellmesh-local-apiserver");
    params.distinguished_name = dn;
    params.subject_alt_names = serving_names(listen);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let server_cert = params.signed_by(&server_key, &issuer)?;
    fs::write(state_dir.join("server.crt"), server_cert.pem())?;

    let admin_token = load_or_create_token(&state_dir.join("admin.token"))?;
    write_kubeconfig(
        &kubeconfig_path(state_dir),
        &ca_pem,
        server_url,
        &admin_token,
    )?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der())
                .map_err(|e| anyhow::anyhow!("serving key: {e}"))?,
        )?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Credentials {
        ca_pem,
        tls: Arc::new(tls),
        admin_token,
    })
}

pub fn kubeconfig_path(state_dir: &Path) -> PathBuf {
    state_dir.join("kubeconfig")
}

fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(token) = fs::read_to_string(path) {
        let token = token.trim();
        if !token.is_empty() {
            return Ok(token.to_owned());
        }
    }
    let token = random_token();
    write_private(path, token.as_bytes())?;
    Ok(token)
}

/// 32 random bytes, hex-encoded.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The kubeconfig document (YAML) for `server_url` with CA data and token.
pub fn kubeconfig(ca_pem: &str, server_url: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT_NAME}
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: {CONTEXT_NAME}-admin
  user:
    token: {token}
contexts:
- name: {CONTEXT_NAME}
  context:
    cluster: {CONTEXT_NAME}
    user: {CONTEXT_NAME}-admin
current-context: {CONTEXT_NAME}
"
    )
}

fn write_kubeconfig(
    path: &Path,
    ca_pem: &str,
    server_url: &str,
    token: &str,
) -> anyhow::Result<()> {
    write_private(path, kubeconfig(ca_pem, server_url, token).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn credentials_are_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.3.4.5:6443".parse().unwrap();
        let first = prepare(dir.path(), listen, "https://127.3.4.5:6443").unwrap();
        let second = prepare(dir.path(), listen, "https://127.3.4.5:6443").unwrap();
        assert_eq!(first.ca_pem, second.ca_pem, "the CA survives restarts");
        assert_eq!(first.admin_token, second.admin_token);
        assert_eq!(first.admin_token.len(), 64);
        let kubeconfig = kubeconfig_path(dir.path());
        let mode = fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(kubeconfig).unwrap();
        assert!(text.contains("server: https://127.3.4.5:6443"));
        assert!(text.contains(&first.admin_token));
        let key_mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
    }

    #[test]
    fn serving_names_include_the_listen_address() {
        let names = serving_names("127.9.8.7:1".parse().unwrap());
        assert!(names.contains(&SanType::IpAddress("127.9.8.7".parse().unwrap())));
        assert!(names.contains(&SanType::IpAddress("127.0.0.1".parse().unwrap())));
    }
}
