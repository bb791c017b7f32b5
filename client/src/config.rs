//! Client configuration and endpoint parsing.

use std::time::Duration;

use crate::Error;

/// dlockd's default client address, used when no endpoint is configured.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7700";
/// Default for [`ClientConfig::connect_timeout`].
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);
/// Default for [`ClientConfig::request_timeout`].
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default for [`ClientConfig::attempt_timeout`].
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);
/// The longest client name the server accepts, in bytes (longer names are truncated).
const CLIENT_NAME_BYTES_MAX: usize = 256;

/// The environment variable naming the CA file (PEM) that nodes' certificates must chain to;
/// setting it turns TLS on.
pub const ENV_CACERT: &str = "DLOCK_CACERT";
/// The environment variable holding a development bearer token ([`ClientConfig::token`]).
pub const ENV_TOKEN: &str = "DLOCK_TOKEN";
/// The environment variable naming this client's certificate (PEM), for nodes that require
/// client certificates.
pub const ENV_CERT: &str = "DLOCK_CERT";
/// The environment variable naming the private key (PEM) of [`ENV_CERT`].
pub const ENV_KEY: &str = "DLOCK_KEY";

/// TLS settings from files: the CA that nodes' certificates must chain to and, optionally, this
/// client's certificate and key.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for a certificate without a key (or the reverse), a certificate
/// without a CA, or an unreadable or unusable file.
pub fn tls_from_files(
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<dlock_tls::ClientTls>, Error> {
    let invalid = |why: String| Err(Error::InvalidArgument(why));
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return invalid("a client certificate and its key must be given together".into()),
    };
    let Some(ca) = ca else {
        if identity.is_some() {
            return invalid(
                "a client certificate needs the CA file that the nodes' certificates chain to"
                    .into(),
            );
        }
        return Ok(None);
    };
    dlock_tls::ClientTls::from_files(ca, identity)
        .map(Some)
        .map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// TLS settings from [`ENV_CACERT`], [`ENV_CERT`] and [`ENV_KEY`]; `None` if none is set.
///
/// # Errors
///
/// As [`tls_from_files`], naming the variables.
pub fn tls_from_env() -> Result<Option<dlock_tls::ClientTls>, Error> {
    let path = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    };
    tls_from_files(
        path(ENV_CACERT).as_deref(),
        path(ENV_CERT).as_deref(),
        path(ENV_KEY).as_deref(),
    )
    .map_err(|e| Error::InvalidArgument(format!("{ENV_CACERT}/{ENV_CERT}/{ENV_KEY}: {e}")))
}

/// How a [`crate::Client`] reaches the cluster.
///
/// ```
/// use std::time::Duration;
/// let mut config = dlock::ClientConfig::new(["node-1:7700", "http://node-2:7700"]);
/// config.request_timeout = Duration::from_secs(5);
/// assert_eq!(config.endpoints.len(), 2);
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    /// Cluster nodes' client addresses: `http://host:port`, `https://host:port` or plain
    /// `host:port`. Any node will do; followers redirect to the leader. Must not be empty.
    /// `https` needs [`ClientConfig::tls`]; with it, plain `host:port` endpoints (and leader
    /// hints) use TLS too.
    pub endpoints: Vec<String>,
    /// TLS for every endpoint ([`tls_from_files`], [`tls_from_env`]); `None`: plaintext.
    pub tls: Option<dlock_tls::ClientTls>,
    /// How long a TCP connect to one node may take before the client tries the next node.
    pub connect_timeout: Duration,
    /// How long one call keeps retrying across nodes (on `UNAVAILABLE`, transport errors,
    /// `RESOURCE_EXHAUSTED`) before it fails with [`Error::Unavailable`] or
    /// [`Error::Overloaded`]. A wait gets its own timeout plus this.
    pub request_timeout: Duration,
    /// How long one attempt of a non-wait call may take on one node before the client gives up
    /// on that node and re-sends the request (same header) to the next one.
    pub attempt_timeout: Duration,
    /// A description of this client for the server's logs (`OpenSessionRequest.client_name`),
    /// at most 256 bytes. Defaults to `host:pid`.
    pub client_name: String,
    /// A bearer token sent with every call (`authorization: Bearer TOKEN`), which a node with
    /// a token file maps to a principal: for development without client certificates
    /// (docs/security.md, "Bearer tokens"). `None` by default; [`token_from_env`] reads
    /// `DLOCK_TOKEN`, as the facade, the C library, Python and `dlockctl` do. A client
    /// certificate's subject, when there is one, is the principal instead.
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientConfig {
    /// Everything but the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("client_name", &self.client_name)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish()
    }
}

/// The bearer token in `DLOCK_TOKEN`, if set and not empty.
pub fn token_from_env() -> Option<String> {
    std::env::var(ENV_TOKEN).ok().filter(|t| !t.is_empty())
}

impl ClientConfig {
    /// A configuration with the given endpoints and default timeouts.
    pub fn new(endpoints: impl IntoIterator<Item = impl AsRef<str>>) -> ClientConfig {
        ClientConfig {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.as_ref().to_owned())
                .collect(),
            ..ClientConfig::default()
        }
    }
}

impl Default for ClientConfig {
    /// `127.0.0.1:7700`, connect 3 s, request 10 s, attempt 3 s, name `host:pid`.
    fn default() -> ClientConfig {
        ClientConfig {
            endpoints: vec![DEFAULT_ENDPOINT.to_owned()],
            tls: None,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            attempt_timeout: ATTEMPT_TIMEOUT_DEFAULT,
            client_name: default_client_name(),
            token: None,
        }
    }
}

/// `host:pid`, from the kernel's hostname (Linux) or `$HOSTNAME`.
fn default_client_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    truncate_client_name(format!("{host}:{}", std::process::id()))
}

/// Cuts a client name to the server's limit on a character boundary.
pub(crate) fn truncate_client_name(mut name: String) -> String {
    if name.len() > CLIENT_NAME_BYTES_MAX {
        let mut cut = CLIENT_NAME_BYTES_MAX;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// The scheme an endpoint was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `http://`: plaintext.
    Http,
    /// `https://`: TLS.
    Https,
    /// `host:port`: whatever the client is configured for.
    Unspecified,
}

/// Normalises an endpoint (`http://host:port`, `https://host:port` or `host:port`, also the
/// leader-hint form) to a `http://host:port` URI (the connector, not the scheme, decides on
/// TLS) and the scheme it was written with.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for an empty string, another scheme, a path, or a missing port.
pub(crate) fn parse_endpoint_scheme(raw: &str) -> Result<(String, Scheme), Error> {
    let (scheme, rest) = match raw.trim().split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some(("http", rest)) => (Scheme::Http, rest),
        _ => (Scheme::Unspecified, raw),
    };
    Ok((parse_endpoint(rest)?, scheme))
}

/// [`parse_endpoint_scheme`] without the scheme (`https` is refused).
pub(crate) fn parse_endpoint(raw: &str) -> Result<String, Error> {
    let s = raw.trim();
    let invalid = |why: &str| Error::InvalidArgument(format!("endpoint {raw:?}: {why}"));
    if s.is_empty() {
        return Err(invalid("empty"));
    }
    let authority = match s.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => return Err(invalid(&format!("unsupported scheme {scheme:?}"))),
        None => s,
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(invalid("expected host:port"));
    }
    let uri: tonic::codegen::http::Uri = format!("http://{authority}")
        .parse()
        .map_err(|e| invalid(&format!("{e}")))?;
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        return Err(invalid("missing host"));
    }
    if uri.port_u16().is_none() {
        return Err(invalid("missing port"));
    }
    Ok(format!("http://{authority}"))
}

/// Splits a comma-separated endpoint list (the `DLOCK_ENDPOINTS` format), skipping blanks.
pub(crate) fn split_endpoint_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_plain_and_http_forms() {
        assert_eq!(
            parse_endpoint("127.0.0.1:7700").unwrap(),
            "http://127.0.0.1:7700"
        );
        assert_eq!(
            parse_endpoint(" http://node-1:7700/ ").unwrap(),
            "http://node-1:7700"
        );
        assert_eq!(parse_endpoint("[::1]:7700").unwrap(), "http://[::1]:7700");
        assert_eq!(parse_endpoint("localhost:1").unwrap(), "http://localhost:1");
    }

    #[test]
    fn endpoints_reject_garbage() {
        for bad in [
            "",
            "  ",
            "node-1",
            "http://node-1",
            "https://node-1:7700",
            "grpc://x:1",
            "http://x:1/path",
            "x:notaport",
            ":7700",
            "http://",
        ] {
            assert!(
                matches!(parse_endpoint(bad), Err(Error::InvalidArgument(_))),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn endpoint_lists_split_on_commas() {
        assert_eq!(
            split_endpoint_list(" a:1, ,http://b:2,"),
            vec!["a:1".to_owned(), "http://b:2".to_owned()]
        );
        assert!(split_endpoint_list("").is_empty());
    }

    #[test]
    fn client_names_are_truncated_on_char_boundaries() {
        let long = "é".repeat(200); // 400 bytes
        let cut = truncate_client_name(long);
        assert!(cut.len() <= 256);
        assert_eq!(cut.len(), 256);
        assert_eq!(truncate_client_name("a:1".into()), "a:1");
        assert!(!default_client_name().is_empty());
    }
}
