//! Opening a store (reading back and checking what is on disk, removing orphan snapshot
//! files) and bootstrapping a new cluster.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

use super::{
    BOOTSTRAP_INDEX, Batch, ENTRY_PREFIX, KEY_CLUSTER_ID, KEY_CONF_STATE, KEY_HARD_STATE,
    KEY_INCARNATION, KEY_SNAP_META, KEY_SNAP_PEERS, KEY_TRUNCATED, Registry, SledStorage,
    SnapshotFiles, TREE_NAME, Wal, decode, decode_registry, storage_err,
};
use crate::Error;

/// The write-ahead log's directory inside the data directory.
pub const WAL_DIR: &str = "wal";

/// How long [`open_db`] keeps retrying a data directory whose lock is still held.
const DB_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the sled database, waiting while another handle in this process still holds its file
/// lock: sled releases the lock from a background thread some time after the last `Db` handle
/// is dropped, so a restart in the same process (tests, an embedded node) can race it. A lock
/// held by another *process* is still refused, after [`DB_LOCK_WAIT`].
fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db, Error> {
    let deadline = std::time::Instant::now() + DB_LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // sled is flushed only when the write-ahead log starts a new segment (module
            // `wal`): its background flusher would cost CPU and make nothing more durable.
            .flush_every_ms(None)
            .open()
        {
            Ok(db) => return Ok(db),
            // sled reports a held lock as ErrorKind::Other with this message (config.rs).
            Err(sled::Error::Io(err))
                if err.to_string().starts_with("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                return Err(storage_err(
                    &format!("open sled db at {}", dir.display()),
                    e,
                ));
            }
        }
    }
}

impl SledStorage {
    /// Opens (or creates) the store in `dir` with a sled page cache of `cache_bytes`.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if sled cannot open the directory or a stored record does not decode.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, Error> {
        SledStorage::open_with_wal_segment(dir, cache_bytes, super::WAL_SEGMENT_BYTES)
    }

    /// [`SledStorage::open`] with write-ahead log segments of `segment_bytes` (between
    /// [`WAL_SEGMENT_BYTES_MIN`](super::WAL_SEGMENT_BYTES_MIN) and
    /// [`WAL_SEGMENT_BYTES_MAX`](super::WAL_SEGMENT_BYTES_MAX)).
    ///
    /// # Errors
    ///
    /// As [`SledStorage::open`].
    pub fn open_with_wal_segment(
        dir: &Path,
        cache_bytes: u64,
        segment_bytes: u64,
    ) -> Result<Self, Error> {
        let db = open_db(dir, cache_bytes)?;
        let tree = db
            .open_tree(TREE_NAME)
            .map_err(|e| storage_err("open raft tree", e))?;
        // Writes made durable by the write-ahead log since sled's last flush (module `wal`).
        let (mut wal, replay) = Wal::open(&dir.join(WAL_DIR), segment_bytes)?;
        if !replay.is_empty() {
            // The latest value of each key, applied as one sled batch: applying each record
            // as its own batch makes sled write a buffer per record (seconds for a full
            // segment, during which the node does not listen).
            let mut latest = super::wal::Latest::new();
            let records = replay.len();
            for batch in replay {
                batch.merge_into(&mut latest);
            }
            tree.apply_batch(super::wal::sled_batch(latest))
                .map_err(|e| storage_err("replay the write-ahead log", e))?;
            db.flush()
                .map_err(|e| storage_err("flush the replayed log", e))?;
            tracing::info!(records, "replayed the write-ahead log into sled");
        }
        wal.restart()?;
        let get = |key: &[u8]| tree.get(key).map_err(|e| storage_err("read metadata", e));

        let hard_state = match get(KEY_HARD_STATE)? {
            Some(v) => decode("hard state", &v)?,
            None => HardState::default(),
        };
        let conf_state: ConfState = match get(KEY_CONF_STATE)? {
            Some(v) => decode("conf state", &v)?,
            None => ConfState::default(),
        };
        let snapshot_meta: SnapshotMetadata = match get(KEY_SNAP_META)? {
            Some(v) => decode("snapshot metadata", &v)?,
            None => SnapshotMetadata::default(),
        };
        let snapshot_registry = match get(KEY_SNAP_PEERS)? {
            Some(v) => {
                let (registry, rest) =
                    decode_registry(&v).map_err(|e| storage_err("decode peer registry", e))?;
                if !rest.is_empty() {
                    return Err(Error::Storage(
                        "trailing bytes after the peer registry".into(),
                    ));
                }
                registry
            }
            // Stores written before the registry existed.
            None => Registry::default(),
        };
        let read_u64 = |key: &[u8], what: &str| -> Result<Option<u64>, Error> {
            match get(key)? {
                None => Ok(None),
                Some(v) => match <[u8; 8]>::try_from(&v[..]) {
                    Ok(bytes) => Ok(Some(u64::from_be_bytes(bytes))),
                    Err(_) => Err(Error::Storage(format!(
                        "{what} has {} bytes, expected 8",
                        v.len()
                    ))),
                },
            }
        };
        let cluster_id = read_u64(KEY_CLUSTER_ID, "cluster id")?.unwrap_or(0);
        let incarnation = match read_u64(KEY_INCARNATION, "incarnation")? {
            Some(incarnation) => incarnation,
            None => {
                // A new data directory (or one written before incarnations existed).
                let incarnation = draw_nonzero();
                tree.insert(KEY_INCARNATION, &incarnation.to_be_bytes())
                    .map_err(|e| storage_err("write incarnation", e))?;
                tree.flush()
                    .map_err(|e| storage_err("flush incarnation", e))?;
                tracing::info!(
                    incarnation = format_args!("{incarnation:016x}"),
                    "new data directory: incarnation drawn"
                );
                incarnation
            }
        };
        let (truncated_index, truncated_term) = match get(KEY_TRUNCATED)? {
            Some(v) => {
                if v.len() != 16 {
                    return Err(Error::Storage(format!(
                        "truncated state has {} bytes, expected 16",
                        v.len()
                    )));
                }
                let index = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                let term = u64::from_be_bytes(v[8..].try_into().expect("8 bytes"));
                (index, term)
            }
            None => (0, 0),
        };
        let (last_index, last_term) = match tree
            .scan_prefix([ENTRY_PREFIX])
            .next_back()
            .transpose()
            .map_err(|e| storage_err("read last entry", e))?
        {
            Some((_, v)) => {
                let entry: Entry = decode("entry", &v)?;
                (entry.index, entry.term)
            }
            None => (truncated_index, truncated_term),
        };

        // Paired assertions: these were checked before writing and must still hold after reading.
        assert_eq!(
            snapshot_meta.get_conf_state(),
            &conf_state,
            "stored conf state differs from the stored snapshot's"
        );
        assert!(
            last_index >= snapshot_meta.index,
            "last index {last_index} is behind the snapshot at {}",
            snapshot_meta.index
        );

        let files = SnapshotFiles::open(dir)?;
        if snapshot_meta.index > 0 && !files.path(snapshot_meta.index).is_file() {
            return Err(Error::Storage(format!(
                "the stored snapshot at index {} has no file {} (a store written by an older \
                 dlock keeps it inside sled: start from an empty data directory)",
                snapshot_meta.index,
                files.path(snapshot_meta.index).display()
            )));
        }
        files.remove_all_but(snapshot_meta.index)?;

        Ok(SledStorage {
            db,
            tree,
            hard_state,
            conf_state,
            snapshot_meta,
            snapshot_registry,
            incarnation,
            cluster_id,
            truncated_index,
            truncated_term,
            last_index,
            last_term,
            snapshot_wanted: AtomicBool::new(false),
            cache: std::collections::VecDeque::new(),
            files,
            envelope: Mutex::new(None),
            obsolete: Vec::new(),
            wal,
            pending: super::wal::Latest::new(),
        })
    }

    /// Writes the initial configuration of a new cluster (a snapshot at index 0) and flushes.
    ///
    /// # Panics
    ///
    /// If the store is already initialized: a node must never be bootstrapped twice.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if the write or flush fails.
    pub fn bootstrap(&mut self, conf_state: ConfState) -> Result<(), Error> {
        assert!(!self.is_initialized(), "bootstrapping an initialized store");
        assert_eq!(self.last_index, 0, "bootstrapping a store with entries");
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().set_conf_state(conf_state);
        let mut batch = Batch::default();
        self.set_truncated(&mut batch, 0, 0);
        self.stage_snapshot(&mut batch, &snapshot, &Registry::default())?;
        self.write(batch, true)
    }

    /// Writes the initial configuration of a new cluster as a snapshot at [`BOOTSTRAP_INDEX`]
    /// (term 1) holding `conf_state`, the peer registry `peers` and `image` (the state machine
    /// image of an empty state machine), then flushes. Every founding member writes the same
    /// snapshot, so their logs agree; see the module docs for why not index 0.
    ///
    /// # Panics
    ///
    /// If the store is already initialized: a node must never be bootstrapped twice.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if the write or flush fails.
    pub fn bootstrap_cluster(
        &mut self,
        conf_state: ConfState,
        peers: &BTreeMap<u64, String>,
        image: Vec<u8>,
    ) -> Result<(), Error> {
        assert!(!self.is_initialized(), "bootstrapping an initialized store");
        assert_eq!(self.last_index, 0, "bootstrapping a store with entries");
        let mut snapshot = Snapshot::default();
        snapshot.set_data(image.into());
        let meta = snapshot.mut_metadata();
        meta.index = BOOTSTRAP_INDEX;
        meta.term = 1;
        meta.set_conf_state(conf_state);
        let mut batch = Batch::default();
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(1);
        hs.commit = hs.commit.max(BOOTSTRAP_INDEX);
        self.set_hard_state(&mut batch, hs)?;
        self.set_truncated(&mut batch, BOOTSTRAP_INDEX, 1);
        self.last_index = BOOTSTRAP_INDEX;
        self.last_term = 1;
        self.stage_snapshot(
            &mut batch,
            &snapshot,
            &Registry::with_addresses(peers.clone()),
        )?;
        self.write(batch, true)
    }
}

/// A random nonzero `u64` from the operating system's generator (0 means "unknown" on the wire).
pub(crate) fn draw_nonzero() -> u64 {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
        let value = u64::from_le_bytes(bytes);
        if value != 0 {
            return value;
        }
    }
}
