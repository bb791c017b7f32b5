//! Reading PEM files, and noticing that they changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file (a chain: the leaf first).
pub(crate) fn certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what,
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            what,
            path: path.to_owned(),
            why: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read(path, "key file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Pem {
        what: "key file",
        path: path.to_owned(),
        why: format!("no usable PRIVATE KEY block ({e})"),
    })
}

/// The trust anchors of a PEM file of CA certificates.
pub(crate) fn roots(path: &Path, what: &'static str) -> Result<Arc<RootCertStore>, Error> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path, what)? {
        store.add(cert).map_err(|e| Error::Pem {
            what,
            path: path.to_owned(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(store))
}

/// What a file looked like when it was read: enough to notice a rewrite, a rename over it or a
/// symlink swap (how Kubernetes updates mounted secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    path: PathBuf,
    seen: Option<(SystemTime, i64, i64, u64, u64)>,
}

impl Stamp {
    pub(crate) fn of(path: &Path) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let seen = std::fs::metadata(path).ok().map(|m| {
            (
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                // The change time too: a chmod or chown that fixes an unreadable file changes
                // nothing else.
                m.ctime(),
                m.ctime_nsec(),
                m.len(),
                m.ino(),
            )
        });
        Stamp {
            path: path.to_owned(),
            seen,
        }
    }

    pub(crate) fn changed(&self) -> bool {
        Stamp::of(&self.path) != *self
    }
}
