//! Certificates for development, tests and the compose cluster: a CA, node certificates
//! (server and client use, naming their node id) and client certificates (a principal each).
//!
//! Production deployments should issue certificates from their own PKI; the rules these follow
//! are the ones that matter there too (docs/security.md): a node certificate carries the host
//! names and addresses peers and clients dial, the URI `dlock://node/<id>`, and both the
//! `serverAuth` and `clientAuth` extended key usages; a client certificate's subject is its
//! principal.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::Error;

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A node certificate to make: its id and the names it is reached by.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Raft id.
    pub id: u64,
    /// Host names and IP addresses peers and clients dial it by.
    pub hosts: Vec<String>,
}

impl NodeSpec {
    /// Node `id` reachable as `node-<id>`, `node<id>`, `localhost`, `127.0.0.1` and `::1`,
    /// plus `extra_hosts` (the names of a deployment).
    pub fn with_default_hosts(id: u64, extra_hosts: &[String]) -> NodeSpec {
        let mut hosts = vec![
            format!("node-{id}"),
            format!("node{id}"),
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ];
        for host in extra_hosts {
            if !hosts.contains(host) {
                hosts.push(host.clone());
            }
        }
        NodeSpec { id, hosts }
    }
}

/// A CA with the certificates it issued.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The CA's certificate and key.
    pub ca: Pair,
    /// Node certificates by id.
    pub nodes: Vec<(u64, Pair)>,
    /// Client certificates by principal name (`CN=<name>`).
    pub clients: Vec<(String, Pair)>,
}

fn generate_error(e: rcgen::Error) -> Error {
    Error::Generate(e.to_string())
}

/// True for a name usable as a client's common name and in a file name.
pub fn valid_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// Makes a CA (`CN=<ca_name>`), a certificate per node and one per client.
///
/// # Errors
///
/// [`Error::Generate`] for an invalid host name or client name.
pub fn generate(ca_name: &str, nodes: &[NodeSpec], clients: &[String]) -> Result<Bundle, Error> {
    let ca_key = KeyPair::generate().map_err(generate_error)?;
    let ca_params = ca_params(ca_name)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(generate_error)?;
    let ca = Pair {
        cert_pem: ca_cert.pem(),
        key_pem: ca_key.serialize_pem(),
    };
    issue(ca, Issuer::new(ca_params, ca_key), nodes, clients)
}

/// Issues new node and client certificates from an existing CA made by [`generate`] with the
/// same `ca_name` (its key is `ca.key_pem`): how certificates are renewed.
///
/// # Errors
///
/// As [`generate`]; [`Error::Generate`] for an unusable CA key.
pub fn reissue(
    ca: &Pair,
    ca_name: &str,
    nodes: &[NodeSpec],
    clients: &[String],
) -> Result<Bundle, Error> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(generate_error)?;
    issue(
        ca.clone(),
        Issuer::new(ca_params(ca_name)?, key),
        nodes,
        clients,
    )
}

fn ca_params(ca_name: &str) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
    params.distinguished_name.push(DnType::CommonName, ca_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn issue(
    ca: Pair,
    issuer: Issuer<'static, KeyPair>,
    nodes: &[NodeSpec],
    clients: &[String],
) -> Result<Bundle, Error> {
    let mut bundle = Bundle {
        ca,
        nodes: Vec::new(),
        clients: Vec::new(),
    };
    for node in nodes {
        if node.id == 0 {
            return Err(Error::Generate("node ids start at 1".into()));
        }
        let key = KeyPair::generate().map_err(generate_error)?;
        let mut params = CertificateParams::new(node.hosts.clone()).map_err(generate_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("node-{}", node.id));
        params.subject_alt_names.push(SanType::URI(
            crate::node_uri(node.id)
                .try_into()
                .map_err(generate_error)?,
        ));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).map_err(generate_error)?;
        bundle.nodes.push((
            node.id,
            Pair {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
        ));
    }
    for name in clients {
        if !valid_client_name(name) {
            return Err(Error::Generate(format!(
                "client name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        bundle.clients.push((name.clone(), client(name, &issuer)?));
    }
    Ok(bundle)
}

/// A client certificate for `name` signed by `issuer`.
fn client(name: &str, issuer: &Issuer<'_, KeyPair>) -> Result<Pair, Error> {
    let key = KeyPair::generate().map_err(generate_error)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).map_err(generate_error)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes a bundle into `dir` (created if missing): `ca.pem`, `ca.key`, `node-<id>.pem`,
/// `node-<id>.key`, `client-<name>.pem`, `client-<name>.key`. Keys are written readable by
/// their owner only, unless `readable_keys` (for bind-mounting into containers that run as
/// another user: development only). Refuses to overwrite an existing `ca.pem` unless `force`.
///
/// # Errors
///
/// [`Error::Io`] if a file cannot be written, [`Error::Generate`] if `ca.pem` exists.
pub fn write(
    dir: &Path,
    bundle: &Bundle,
    force: bool,
    readable_keys: bool,
) -> Result<Vec<PathBuf>, Error> {
    let io = |path: &Path, source| Error::Io {
        what: "certificate directory",
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    if dir.join("ca.pem").exists() && !force {
        return Err(Error::Generate(format!(
            "{} already holds a CA (ca.pem); pass --force to replace every certificate there",
            dir.display()
        )));
    }
    let mut written = Vec::new();
    let mut put = |name: String, text: &str, private: bool| -> Result<(), Error> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(name);
        // Written beside and renamed over, so that a node polling the files never reads half.
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private && !readable_keys {
                0o600
            } else {
                0o644
            })
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        written.push(path);
        Ok(())
    };
    put("ca.pem".into(), &bundle.ca.cert_pem, false)?;
    put("ca.key".into(), &bundle.ca.key_pem, true)?;
    for (id, pair) in &bundle.nodes {
        put(format!("node-{id}.pem"), &pair.cert_pem, false)?;
        put(format!("node-{id}.key"), &pair.key_pem, true)?;
    }
    for (name, pair) in &bundle.clients {
        put(format!("client-{name}.pem"), &pair.cert_pem, false)?;
        put(format!("client-{name}.key"), &pair.key_pem, true)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PeerIdentity;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn node_and_client_certificates_carry_their_identities() {
        let bundle = generate(
            "test CA",
            &[NodeSpec::with_default_hosts(2, &["dlock-a".into()])],
            &["billing".into()],
        )
        .unwrap();
        let node = CertificateDer::from_pem_slice(bundle.nodes[0].1.cert_pem.as_bytes()).unwrap();
        let identity = PeerIdentity::from_der(&node).unwrap();
        assert_eq!(identity.node_id, Some(2));
        assert_eq!(identity.subject, "CN=node-2");
        let client =
            CertificateDer::from_pem_slice(bundle.clients[0].1.cert_pem.as_bytes()).unwrap();
        let identity = PeerIdentity::from_der(&client).unwrap();
        assert_eq!(identity.node_id, None);
        assert_eq!(identity.subject, "CN=billing");
        assert!(generate("x", &[], &["../etc".into()]).is_err());
    }

    #[test]
    fn subjects_are_written_as_rfc_4514_with_special_characters_escaped() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "acme");
        params
            .distinguished_name
            .push(DnType::CommonName, "billing, O=evil");
        let cert = params.self_signed(&key).unwrap();
        let identity = PeerIdentity::from_der(cert.der()).unwrap();
        // rcgen encodes the CN first and RFC 4514 writes the last RDN first; the comma and
        // equals sign inside the CN are escaped, so this cannot be mistaken for a name with an
        // O=evil attribute.
        assert_eq!(identity.subject, "O=acme,CN=billing\\, O\\=evil");
    }
}
