//! The serving side: a listener's connections, TLS or not, for tonic.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::{PeerIdentity, ServerTls};

/// Most TLS handshakes one listener runs at once; a connection that arrives beyond it is closed
/// at once (accepting never stops). Bounds the memory and CPU a flood of connections can take.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 128;

/// Most TLS handshakes one listener runs at once for one remote IP address; beyond it the
/// connection is closed at once, so one host cannot take every handshake slot.
pub const HANDSHAKES_PER_ADDRESS_MAX: usize = 16;

/// How long a connection may take to finish its TLS handshake before it is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection to a TLS port may stay silent before it is closed (every TLS client
/// sends its hello at once).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);

/// Accepted connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// How long to pause after a failed `accept` (out of file descriptors, say) before trying
/// again, so that the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A served connection.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP: a listener without TLS, or a plaintext client on a TLS listener (its
    /// [`ConnInfo::plaintext_on_tls`] is set and its requests should be refused with a
    /// message saying why).
    Plain(TcpStream, ConnInfo),
    /// A finished TLS handshake.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, ConnInfo),
}

/// What the server knows about a connection; tonic puts it in every request's extensions
/// (`request.extensions().get::<ConnInfo>()`).
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// Who the client's certificate (verified against the trusted CA) says it is; `None`
    /// without a client certificate.
    pub peer: Option<Arc<PeerIdentity>>,
    /// A client that spoke plaintext to a TLS listener.
    pub plaintext_on_tls: bool,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(_, info) | Conn::Tls(_, info) => info.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, _) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// The connections of `listener` for `serve_with_incoming_shutdown`: plain TCP without `tls`,
/// else TLS with the configuration current when each connection arrives. `port` names the
/// listener in logs ("client", "peer"). The accept loop ends, and the listener closes, when
/// the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    port: &'static str,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(accept_loop(listener, tls, port, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    port: &'static str,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    let per_address: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(port, error = %err, "accept failed; pausing");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let info = ConnInfo {
            remote_addr: Some(remote),
            ..ConnInfo::default()
        };
        let Some(tls) = &tls else {
            if tx.send(Ok(Conn::Plain(tcp, info))).await.is_err() {
                return;
            }
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(port, %remote, "too many TLS handshakes in flight; connection closed");
            continue;
        };
        let Some(slot) = AddressSlot::take(&per_address, remote.ip()) else {
            tracing::debug!(port, %remote, "too many TLS handshakes from this address; connection closed");
            continue;
        };
        let config = tls.server_config();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, info, config))
                .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) => {
                    tracing::info!(port, %remote, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(port, %remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                    return;
                }
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

/// A TLS record of type handshake: how every TLS client's first message starts.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

async fn handshake(
    tcp: TcpStream,
    mut info: ConnInfo,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<Conn> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "sent nothing"))??;
    if peeked == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before sending anything",
        ));
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        // Most likely a plaintext gRPC client: serve it, so that its calls can be refused
        // with a status that says what to change rather than a reset connection.
        info.plaintext_on_tls = true;
        return Ok(Conn::Plain(tcp, info));
    }
    let stream = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
    if let Some(leaf) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        let identity = PeerIdentity::from_der(leaf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        info.peer = Some(Arc::new(identity));
    }
    Ok(Conn::Tls(Box::new(stream), info))
}

/// A handshake slot of one remote address; given back when dropped.
struct AddressSlot {
    table: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(table: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<Self> {
        let mut counts = table.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= HANDSHAKES_PER_ADDRESS_MAX {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The status a call on a [`ConnInfo::plaintext_on_tls`] connection is refused with: on the
/// client port (`peer_port` false) it tells a client what to configure, on the peer port it
/// tells the operator of the calling node.
pub fn plaintext_refusal(peer_port: bool) -> tonic::Status {
    tonic::Status::unauthenticated(if peer_port {
        "this dlockd peer port requires mutual TLS: start the calling node with \
         --peer-cert-file, --peer-key-file and --peer-trusted-ca-file"
    } else {
        "this dlockd client port requires TLS: connect with https:// endpoints and the CA in \
         DLOCK_CACERT (and DLOCK_CERT/DLOCK_KEY if client certificates are required)"
    })
}
