//! A node's TLS identity: read from files, made into rustls configurations, read again to
//! rotate.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use crate::files::{self, Stamp};
use crate::{Error, PeerIdentity, alpn_h2, provider};

/// Where a listener's certificate, key and trusted CA are, and whether it requires client
/// certificates (etcd's `--cert-file`, `--key-file`, `--trusted-ca-file`,
/// `--client-cert-auth`, and their `--peer-*` forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// PEM certificate chain, the leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to. Without it no client
    /// certificate is asked for.
    pub trusted_ca: Option<PathBuf>,
    /// Refuse connections without a client certificate that chains to `trusted_ca` (which it
    /// then requires). Without it a client certificate is optional but checked if presented.
    pub client_cert_auth: bool,
}

/// A listener's TLS identity, re-readable at run time: see the [crate docs](crate).
#[derive(Debug)]
pub struct ServerTls {
    files: ServerFiles,
    /// The node id the certificate must name, for a peer port.
    node_id: Option<u64>,
    loaded: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    server: Arc<ServerConfig>,
    client: Option<Arc<ClientConfig>>,
    identity: PeerIdentity,
    stamps: Vec<Stamp>,
}

impl ServerTls {
    /// Reads the files. With `node_id`, the certificate must name that node
    /// (`dlock://node/<id>`), as a peer port's must.
    ///
    /// # Errors
    ///
    /// An unreadable or unusable file, a key that does not match the certificate,
    /// `client_cert_auth` without `trusted_ca`, a certificate naming another node.
    pub fn load(files: ServerFiles, node_id: Option<u64>) -> Result<Arc<ServerTls>, Error> {
        let loaded = build(&files, node_id, stamps(&files))?;
        Ok(Arc::new(ServerTls {
            files,
            node_id,
            loaded: RwLock::new(loaded),
        }))
    }

    /// The files this identity is read from.
    pub fn files(&self) -> &ServerFiles {
        &self.files
    }

    /// The current server configuration (new connections use it; open ones keep theirs).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.read().server.clone()
    }

    /// A client configuration presenting the same certificate and trusting the same CA, for
    /// the peer transport's outgoing links; `None` without a trusted CA.
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.read().client.clone()
    }

    /// Who the current certificate says this node is.
    pub fn identity(&self) -> PeerIdentity {
        self.read().identity.clone()
    }

    /// True if a file changed since it was last read.
    pub fn changed(&self) -> bool {
        self.read().stamps.iter().any(Stamp::changed)
    }

    /// Reads the files again and, if they make a valid configuration, uses it for new
    /// connections. On error the previous configuration stays.
    ///
    /// # Errors
    ///
    /// As [`ServerTls::load`].
    pub fn reload(&self) -> Result<(), Error> {
        // Stamped before reading: a file replaced while it is read is read again next time.
        let seen = stamps(&self.files);
        match build(&self.files, self.node_id, seen.clone()) {
            Ok(loaded) => {
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = loaded;
                Ok(())
            }
            Err(err) => {
                // Remember what was read, so that a broken file is reported once, not on
                // every poll (a certificate written before its key fails until the key
                // arrives, which is a change again).
                self.loaded
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .stamps = seen;
                Err(err)
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn stamps(files: &ServerFiles) -> Vec<Stamp> {
    let mut stamps = vec![Stamp::of(&files.cert), Stamp::of(&files.key)];
    if let Some(ca) = &files.trusted_ca {
        stamps.push(Stamp::of(ca));
    }
    stamps
}

fn build(files: &ServerFiles, node_id: Option<u64>, stamps: Vec<Stamp>) -> Result<Loaded, Error> {
    let chain = files::certificates(&files.cert, "certificate file")?;
    let key = files::private_key(&files.key)?;
    let identity = PeerIdentity::from_der(&chain[0]).map_err(|e| {
        Error::Certificate(format!("certificate file {}: {e}", files.cert.display()))
    })?;
    if let Some(want) = node_id
        && identity.node_id != Some(want)
    {
        return Err(Error::Certificate(format!(
            "certificate file {} must name this node with the URI subject alternative name \
             {:?}; it names {}",
            files.cert.display(),
            crate::node_uri(want),
            match identity.node_id {
                Some(id) => format!("node {id}"),
                None => "no node".into(),
            }
        )));
    }
    let roots = match &files.trusted_ca {
        Some(path) => Some(files::roots(path, "trusted CA file")?),
        None if files.client_cert_auth => {
            return Err(Error::Certificate(
                "client certificate authentication needs a trusted CA file".into(),
            ));
        }
        None => None,
    };
    let rustls = |e: rustls::Error| Error::Rustls(e.to_string());
    let verifier = match &roots {
        Some(roots) => {
            let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let builder = if files.client_cert_auth {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            builder
                .build()
                .map_err(|e| Error::Rustls(format!("client verifier: {e}")))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| {
            Error::Rustls(format!(
                "certificate {} and key {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    server.alpn_protocols = alpn_h2();
    let client = match roots {
        Some(roots) => {
            let mut client = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(rustls)?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(rustls)?;
            client.alpn_protocols = alpn_h2();
            Some(Arc::new(client))
        }
        None => None,
    };
    Ok(Loaded {
        server: Arc::new(server),
        client,
        identity,
        stamps,
    })
}
