//! The dialing side: a tower connector for tonic channels, TLS or not.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::files;
use crate::{Error, PeerIdentity, ServerTls, alpn_h2, provider};

/// A client's TLS settings: the CA that server certificates must chain to and, for servers that
/// require client certificates, this client's certificate and key.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

/// Two settings are equal when they are the same loaded configuration (clones of one
/// [`ClientTls::from_files`]), not when their files match.
impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for ClientTls {}

impl ClientTls {
    /// Reads a CA file and, optionally, a certificate and key file (all PEM).
    ///
    /// # Errors
    ///
    /// An unreadable or unusable file, a key that does not match its certificate.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, Error> {
        let roots = files::roots(ca, "CA file")?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Rustls(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => {
                let chain = files::certificates(cert, "certificate file")?;
                let key_der = files::private_key(key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    Error::Rustls(format!(
                        "certificate {} and key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn_h2();
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }
}

#[derive(Debug, Clone)]
enum Source {
    Fixed(Arc<ClientConfig>),
    /// A node's peer identity, read again on every connect so that rotation applies.
    Node(Arc<ServerTls>),
}

/// Dials `http://host:port` URIs for `tonic::transport::Endpoint::connect_with_connector*`:
/// TCP with `TCP_NODELAY`, then TLS if configured (the URI's host is the name the server's
/// certificate must carry). Endpoints keep the `http` scheme; this connector decides.
#[derive(Debug, Clone)]
pub struct Connector {
    tls: Option<Source>,
    expect_node: Option<u64>,
}

impl Connector {
    /// Plain TCP.
    pub fn plain() -> Connector {
        Connector {
            tls: None,
            expect_node: None,
        }
    }

    /// TLS with `tls`; plain TCP with `None`.
    pub fn new(tls: Option<ClientTls>) -> Connector {
        Connector {
            tls: tls.map(|t| Source::Fixed(t.config)),
            expect_node: None,
        }
    }

    /// A node's link to peer `to`: TLS presenting `tls`'s certificate (as it is at each
    /// connect), and the server's certificate must name node `to`.
    pub fn peer(tls: Arc<ServerTls>, to: u64) -> Connector {
        Connector {
            tls: Some(Source::Node(tls)),
            expect_node: Some(to),
        }
    }

    /// True if this connector speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    async fn connect(self, uri: Uri) -> io::Result<ClientConn> {
        let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
        let host = uri
            .host()
            .ok_or_else(|| invalid("endpoint without a host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri
            .port_u16()
            .ok_or_else(|| invalid("endpoint without a port"))?;
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let _ = tcp.set_nodelay(true);
        let config = match &self.tls {
            None => return Ok(ClientConn::Plain(tcp)),
            Some(Source::Fixed(config)) => config.clone(),
            Some(Source::Node(node)) => node.client_config().ok_or_else(|| {
                invalid("the peer identity has no trusted CA to check peers against")
            })?,
        };
        let name = ServerName::try_from(host.clone())
            .map_err(|e| invalid(&format!("{host:?} is not a valid TLS server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|err| {
                explain_handshake_failure(&host, port, self.expect_node.is_some(), err)
            })?;
        if let Some(want) = self.expect_node {
            let named = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|leaf| PeerIdentity::from_der(leaf).map(|i| i.node_id));
            if !matches!(named, Some(Ok(Some(id))) if id == want) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{host}:{port} should be node {want} but its certificate does not \
                         name it ({})",
                        crate::node_uri(want)
                    ),
                ));
            }
        }
        Ok(ClientConn::Tls(Box::new(stream)))
    }
}

/// If `err` or one of its sources is a TLS failure, what it means for the client, in words
/// that say what to change; `None` for other errors.
pub fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::AlertDescription as Alert;
    let alert_meaning = |alert: Alert| match alert {
        Alert::CertificateRequired => "the node requires a client certificate: set DLOCK_CERT \
                                       and DLOCK_KEY (dlockctl --cert/--key)"
            .to_owned(),
        Alert::BadCertificate | Alert::UnknownCA | Alert::CertificateUnknown => {
            "the node refused this client's certificate (is it signed by the CA the node \
             trusts, --trusted-ca-file?)"
                .to_owned()
        }
        other => format!("the node ended TLS with the alert {other:?}"),
    };
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(rustls_error) = e.downcast_ref::<rustls::Error>() {
            return Some(match rustls_error {
                rustls::Error::AlertReceived(alert) => alert_meaning(*alert),
                other => format!("TLS failure: {other}"),
            });
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            // tokio-rustls hands rustls' errors on as text inside an io::Error.
            let text = io.to_string();
            if text.starts_with("TLS handshake with ") {
                return Some(text);
            }
            if let Some(alert) = text.strip_prefix("received fatal alert: ") {
                let known = [
                    Alert::CertificateRequired,
                    Alert::BadCertificate,
                    Alert::UnknownCA,
                    Alert::CertificateUnknown,
                ];
                return Some(
                    known
                        .into_iter()
                        .find(|a| format!("{a:?}") == alert)
                        .map(alert_meaning)
                        .unwrap_or_else(|| format!("the node ended TLS with the alert {alert}")),
                );
            }
        }
        current = e.source();
    }
    None
}

/// Turns a handshake error into one that says what is probably wrong.
fn explain_handshake_failure(host: &str, port: u16, peer: bool, err: io::Error) -> io::Error {
    let rustls_error = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    let message = match rustls_error {
        Some(rustls::Error::InvalidMessage(_)) if peer => format!(
            "TLS handshake with peer {host}:{port} failed: it did not answer in TLS (is that \
             node started without --peer-cert-file?)"
        ),
        Some(rustls::Error::InvalidMessage(_)) => format!(
            "TLS handshake with {host}:{port} failed: it did not answer in TLS (is it serving \
             plaintext, without --cert-file? then use an http:// endpoint)"
        ),
        Some(rustls::Error::InvalidCertificate(why)) => format!(
            "TLS handshake with {host}:{port} failed: its certificate is not trusted ({why}); \
             check the CA file and that the certificate names {host:?}"
        ),
        Some(other) => format!("TLS handshake with {host}:{port} failed: {other}"),
        None => format!("TLS handshake with {host}:{port} failed: {err}"),
    };
    io::Error::new(err.kind(), message)
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<ClientConn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<ClientConn>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await.map(TokioIo::new) })
    }
}

/// A dialed connection.
#[derive(Debug)]
pub enum ClientConn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientConn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientConn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientConn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientConn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientConn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
