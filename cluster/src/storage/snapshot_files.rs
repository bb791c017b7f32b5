//! The snapshot image files `<dir>/snapshots/<index>.snap` of a store: writing them durably,
//! reading them back and removing the ones no metadata names (see the storage module docs,
//! "Snapshot files").

use std::io::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{Registry, encode_snapshot_data, storage_err};
use crate::Error;

/// The directory of snapshot files inside the store's directory.
const SNAPSHOT_DIR: &str = "snapshots";

/// The snapshot files of one store (see the storage module docs): cheap to clone, usable from any
/// thread, so that a background thread can write a snapshot while the raft thread goes on.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    pub(super) fn open(store_dir: &Path) -> Result<Self, Error> {
        let dir = store_dir.join(SNAPSHOT_DIR);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| storage_err(&format!("create {}", dir.display()), e))?;
            // The new directory's entry must be durable before any file in it is relied on.
            std::fs::File::open(store_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| storage_err(&format!("fsync {}", store_dir.display()), e))?;
        }
        Ok(SnapshotFiles { dir })
    }

    pub(super) fn path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{index:020}.snap"))
    }

    /// Writes `envelope` as the snapshot file for `index` and makes it durable: a temporary
    /// file, fsync, rename, fsync of the directory. Replaces an existing file for `index`.
    ///
    /// # Errors
    ///
    /// `Error::Storage` for any I/O failure (the caller must not record the snapshot).
    pub fn write(&self, index: u64, envelope: &[u8]) -> Result<(), Error> {
        let path = self.path(index);
        let tmp = path.with_extension("tmp");
        let fail =
            |what: &str, e: std::io::Error| storage_err(&format!("{what} {}", tmp.display()), e);
        let mut file = std::fs::File::create(&tmp).map_err(|e| fail("create", e))?;
        file.write_all(envelope).map_err(|e| fail("write", e))?;
        file.sync_all().map_err(|e| fail("fsync", e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| fail("rename", e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| storage_err(&format!("fsync {}", self.dir.display()), e))?;
        Ok(())
    }

    /// Wraps `image` with the peer registry `registry` into the wire envelope
    /// ([`encode_snapshot_data`]), writes it as the file for `index` ([`SnapshotFiles::write`])
    /// and returns it.
    ///
    /// # Errors
    ///
    /// `Error::Storage` for any I/O failure.
    pub fn write_image(
        &self,
        index: u64,
        registry: &Registry,
        image: &[u8],
    ) -> Result<Bytes, Error> {
        let envelope = Bytes::from(encode_snapshot_data(registry, image));
        self.write(index, &envelope)?;
        Ok(envelope)
    }

    pub(super) fn read(&self, index: u64) -> Result<Vec<u8>, Error> {
        let path = self.path(index);
        std::fs::read(&path).map_err(|e| storage_err(&format!("read {}", path.display()), e))
    }

    /// Removes the file for `index` (best effort: a leftover file is removed at the next open).
    pub(super) fn remove(&self, index: u64) {
        let path = self.path(index);
        if let Err(err) = std::fs::remove_file(&path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove an old snapshot file");
        }
    }

    /// Removes the file for `index` unless it is `stored`, the one the metadata names.
    pub fn remove_stale(&self, index: u64, stored: u64) {
        if index != stored {
            self.remove(index);
        }
    }

    /// Removes every file but the one for `keep` (orphans of a crash, temporaries).
    pub(super) fn remove_all_but(&self, keep: u64) -> Result<(), Error> {
        let keep = self.path(keep);
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| storage_err(&format!("list {}", self.dir.display()), e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| storage_err(&format!("list {}", self.dir.display()), e))?
                .path();
            if path != keep && path.is_file() {
                tracing::info!(path = %path.display(), "removing a snapshot file no metadata names");
                std::fs::remove_file(&path)
                    .map_err(|e| storage_err(&format!("remove {}", path.display()), e))?;
            }
        }
        Ok(())
    }
}
