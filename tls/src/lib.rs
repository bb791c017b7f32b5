//! TLS for dlock, on rustls with the `ring` provider.
//!
//! - [`ServerTls`]: a node's certificate, key and trusted CA, read from PEM files and read again
//!   on demand ([`ServerTls::reload`]) so that certificates rotate without a restart. It makes
//!   the server configuration and, for the peer transport, the client configuration that
//!   presents the same certificate.
//! - [`incoming`]: a listener's connections for `tonic`'s `serve_with_incoming_shutdown`, with
//!   TLS handshakes run concurrently (at most [`HANDSHAKES_IN_FLIGHT_MAX`] per listener, each
//!   bounded by [`HANDSHAKE_TIMEOUT`]). Each connection carries a [`ConnInfo`] into the
//!   requests' extensions: the remote address and the [`PeerIdentity`] its certificate names.
//! - [`ClientTls`] and [`Connector`]: the dialing side for `tonic` channels.
//! - [`certs`]: a development CA and node and client certificates (`dlockctl certs init`).
//!
//! # Identities in certificates
//!
//! A node's certificate names its Raft id as a URI subject alternative name
//! `dlock://node/<id>` ([`node_uri`]); the peer transport accepts messages only from the node
//! its connection's certificate names. A client's principal is its certificate's subject (the
//! RFC 4514 form, e.g. `CN=billing`).

#![forbid(unsafe_code)]

pub mod certs;
mod client;
mod conn;
mod files;
mod server;

use std::path::PathBuf;

pub use client::{ClientConn, tls_failure};
pub use client::{ClientTls, Connector};
pub use conn::{
    Conn, ConnInfo, FIRST_BYTE_TIMEOUT, HANDSHAKE_TIMEOUT, HANDSHAKES_IN_FLIGHT_MAX,
    HANDSHAKES_PER_ADDRESS_MAX, incoming, plaintext_refusal,
};
pub use server::{ServerFiles, ServerTls};

/// The URI subject alternative name that makes a certificate node `id`'s.
pub fn node_uri(id: u64) -> String {
    format!("dlock://node/{id}")
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's subject as RFC 4514 writes it (`CN=billing,O=acme`): a client's
    /// principal.
    pub subject: String,
    /// The node id of a `dlock://node/<id>` subject alternative name, if it has exactly one.
    pub node_id: Option<u64>,
}

impl PeerIdentity {
    /// Reads the identity of a DER certificate.
    ///
    /// # Errors
    ///
    /// [`Error::Certificate`] if it does not parse.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::Certificate(format!("unparsable certificate: {e}")))?;
        let mut node_ids = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name
                    && let Some(id) = uri.strip_prefix("dlock://node/")
                {
                    match id.parse::<u64>() {
                        Ok(id) if id > 0 => node_ids.push(id),
                        _ => {
                            return Err(Error::Certificate(format!(
                                "certificate names an invalid node {uri:?}"
                            )));
                        }
                    }
                }
            }
        }
        node_ids.dedup();
        let node_id = match node_ids.as_slice() {
            [] => None,
            [id] => Some(*id),
            more => {
                return Err(Error::Certificate(format!(
                    "certificate names several nodes {more:?}"
                )));
            }
        };
        Ok(PeerIdentity {
            subject: rfc4514(cert.subject()),
            node_id,
        })
    }
}

/// A distinguished name as RFC 4514 writes it: the last RDN first, multi-valued RDNs joined by
/// `+`, short attribute names where known (dotted OIDs otherwise), special characters escaped,
/// and values that are not strings as `#` and their DER in hex. Two different names never give
/// the same string, which principals rely on.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let kind = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map(str::to_owned)
                        .unwrap_or_else(|_| attr.attr_type().to_id_string());
                    let value = match attr.as_str() {
                        Ok(text) => escape_rfc4514(text),
                        Err(_) => {
                            let mut hex = String::from("#");
                            for byte in attr.attr_value().as_bytes() {
                                hex.push_str(&format!("{byte:02x}"));
                            }
                            hex
                        }
                    };
                    format!("{kind}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// Escapes an attribute value per RFC 4514 §2.4.
fn escape_rfc4514(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// What can go wrong reading certificates or making TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Io {
        /// What the file was meant to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file held no usable PEM of the expected kind.
    #[error("{what} {}: {why}", path.display())]
    Pem {
        /// What the file was meant to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it is unusable.
        why: String,
    },
    /// rustls refused the certificates or key (a key that does not match the certificate, an
    /// unsupported algorithm).
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// A certificate could not be parsed or names something invalid.
    #[error("{0}")]
    Certificate(String),
    /// Generating certificates failed.
    #[error("certificate generation: {0}")]
    Generate(String),
}

/// The crypto provider every configuration uses: *ring*. rustls 0.23.48 deprecates its ring
/// provider because it lacks post-quantum key exchange; aws-lc-rs has it but builds a large C
/// library with cmake, which the README's two-command build does not assume
/// (docs/dependencies.md).
#[allow(deprecated)]
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN for gRPC: HTTP/2 only.
fn alpn_h2() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec()]
}

/// An error and its sources, `: `-separated, each cause once (tonic's transport error alone
/// says only "transport error"; the TLS failure is several sources down).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
