//! `raft::Storage` on sled: the Raft log, hard state, conf state and the latest snapshot.
//!
//! # Layout
//!
//! Everything lives in one sled tree named [`TREE_NAME`], so that all the writes of one `Ready`
//! can go into one [`Batch`] (sled batches are atomic only within a tree), made durable by one
//! record of the write-ahead log and one `fdatasync` (module `wal`):
//!
//! | key | value |
//! |---|---|
//! | `0x01 ‖ be_u64(index)` | `eraftpb::Entry` (protobuf) |
//! | `hs` | `eraftpb::HardState` |
//! | `cs` | `eraftpb::ConfState` as of the stored snapshot (equal to the one in `snap_meta`) |
//! | `snap_meta` | `eraftpb::SnapshotMetadata` of the stored snapshot |
//! | `snap_peers` | the peer registry (addresses, incarnations) as of the stored snapshot ([`encode_registry`]) |
//! | `cluster_id` | `be_u64`: the cluster this store belongs to, once known |
//! | `incarnation` | `be_u64`: this data directory's incarnation, drawn when it was created |
//! | `trunc` | `be_u64(index) ‖ be_u64(term)` of the last entry removed from the log |
//!
//! Keys are big-endian so that sled's lexicographic order is numeric order. The metadata keys
//! begin with ASCII letters, so they never fall inside the entry range `0x01 ‖ …`.
//!
//! # Snapshot files
//!
//! The snapshot itself is not in sled: it is a file `<dir>/snapshots/<index>.snap` holding the
//! wire envelope ([`encode_snapshot_data`]: peer registry ‖ state machine image) written by
//! [`SnapshotFiles::write`] (temporary file, fsync, rename, fsync of the directory). A state of
//! a few hundred MB would otherwise be one sled value: sled keeps such values in memory and its
//! flush writes them out, so the raft thread's next per-`Ready` flush would pay for it. The
//! file is written *before* the metadata that names it (`snap_meta`) is committed, so a crash
//! in between leaves only an orphan file, removed at the next open; a file is removed only
//! after metadata naming a newer one is durable. The raft thread writes files only for
//! snapshots received from a leader; its own snapshots are serialised and written by a
//! background thread, and the raft thread then records them with [`SledStorage::record_snapshot`].
//!
//! # Why the conf state is stored only with snapshots
//!
//! `initial_state()` must return the configuration that matches the applied index raft is
//! restarted with. The node restarts with `applied = snapshot index` and raft re-delivers every
//! committed entry after it, including conf changes, which are then applied again. If the
//! conf state were persisted at apply time, a restarted node would apply those conf changes a
//! second time (and entering a joint configuration twice is an error). So the persisted
//! ConfState is always the one *at the snapshot index*, exactly like etcd's MemoryStorage.
//!
//! # Peer addresses
//!
//! The registry of member addresses (node id → peer address) follows the same rule as the conf
//! state: the stored copy (`snap_peers`) is the one *at the snapshot index*; conf-change entries
//! after it carry the addresses of the nodes they add and are re-applied on restart. A snapshot
//! sent to another node carries the registry inline: `Snapshot.data` on the wire is an envelope
//! ([`encode_snapshot_data`]) holding the registry and the state machine image, so a node that
//! catches up through a snapshot learns every member's address. The registry ([`Registry`])
//! also holds the recorded incarnation of each member and the retired incarnations of removed
//! ones (node module `identity`); they change through identity-record entries and conf
//! changes, and follow the same rule.
//!
//! # Bootstrap
//!
//! [`SledStorage::bootstrap_cluster`] stores the initial configuration as a snapshot at index
//! [`BOOTSTRAP_INDEX`] (term 1), like raft-rs's `five_mem_node`, not at index 0: the log then
//! starts at index 2, so a node added later (which starts empty) can never be sent the log from
//! index 1, which would not contain the initial configuration; it receives the snapshot instead.
//!
//! # Writes
//!
//! Mutating methods only *stage* their writes into a caller-supplied [`Batch`] and update
//! the in-memory caches; [`SledStorage::write`] logs the batch and keeps its writes in memory
//! (where reads look first) until sled gets them (module `wal`). The raft thread
//! never lets raft read the storage between staging and writing, and if the write fails the
//! node stops (fails closed), so caches that ran ahead of the disk are never observed.

mod codec;
mod open;
mod snapshot_files;
mod wal;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::Error;

pub use codec::{
    RETIRED_MAX, Registry, decode_peers, decode_registry, decode_snapshot_data, encode_peers,
    encode_registry, encode_snapshot_data,
};
pub(crate) use open::draw_nonzero;
pub use snapshot_files::SnapshotFiles;
use wal::Wal;
pub use wal::{
    Batch, SEGMENT_BYTES as WAL_SEGMENT_BYTES, SEGMENT_BYTES_MAX as WAL_SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN as WAL_SEGMENT_BYTES_MIN,
};

/// Name of the sled tree that holds the Raft log and metadata.
pub const TREE_NAME: &str = "raft";

/// Prefix byte of entry keys.
const ENTRY_PREFIX: u8 = 0x01;
const KEY_HARD_STATE: &[u8] = b"hs";
const KEY_CONF_STATE: &[u8] = b"cs";
const KEY_SNAP_META: &[u8] = b"snap_meta";
const KEY_TRUNCATED: &[u8] = b"trunc";
const KEY_SNAP_PEERS: &[u8] = b"snap_peers";
const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
const KEY_INCARNATION: &[u8] = b"incarnation";

/// Index (and term) of the snapshot that [`SledStorage::bootstrap_cluster`] stores.
pub const BOOTSTRAP_INDEX: u64 = 1;

/// The key of the entry at `index`.
fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = ENTRY_PREFIX;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn storage_err(context: &str, err: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{context}: {err}"))
}

fn raft_other(err: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(err.to_string().into()))
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M, Error> {
    M::parse_from_bytes(bytes).map_err(|e| storage_err(&format!("decode {what}"), e))
}

fn encode<M: protobuf::Message>(what: &str, message: &M) -> Result<Vec<u8>, Error> {
    message
        .write_to_bytes()
        .map_err(|e| storage_err(&format!("encode {what}"), e))
}

/// Sled-backed Raft storage with in-memory caches of the hot metadata.
///
/// Owned by the raft thread (inside the `RawNode`); the `raft::Storage` methods take `&self`.
pub struct SledStorage {
    db: sled::Db,
    tree: sled::Tree,
    hard_state: HardState,
    /// ConfState at the stored snapshot (see the module docs for why not the latest one).
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    /// Peer addresses at the stored snapshot.
    snapshot_registry: Registry,
    /// The incarnation of this data directory, drawn when it was created.
    incarnation: u64,
    /// The cluster this store belongs to (0: not known yet).
    cluster_id: u64,
    /// Index and term of the last entry removed from the log (0, 0 for a fresh log).
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
    last_term: u64,
    /// Set when raft asked for a snapshot newer than the stored one; the raft thread then makes
    /// a fresh one (only it can call into the state machine).
    snapshot_wanted: AtomicBool,
    /// The newest entries, decoded: a contiguous run ending at the last entry appended (at most
    /// [`ENTRY_CACHE_MAX`] of them). Raft re-reads the same recent entries for every follower
    /// it probes or catches up (on each heartbeat response while probing), and reading them
    /// back from sled and decoding them each time kept a leader's raft thread busy for seconds
    /// when a thawed follower's backlog of responses arrived.
    cache: std::collections::VecDeque<Entry>,
    /// Where snapshot images live (see the module docs).
    files: SnapshotFiles,
    /// The stored snapshot's envelope, once read or written, so that sending it to a lagging
    /// follower costs no disk read and no copy on the raft thread.
    envelope: Mutex<Option<Bytes>>,
    /// Snapshot files to delete once the metadata that replaced them is durable.
    obsolete: Vec<u64>,
    /// Where each write is made durable until sled is written and flushed (module `wal`).
    wal: Wal,
    /// The latest value (`None`: removed) of every key written since sled was last written:
    /// the log's records, not yet in sled. Reads look here first. sled gets them in one batch
    /// and one flush when the log's segment is full (module `wal` says why not per write).
    pending: wal::Latest,
}

/// Most entries kept decoded in [`SledStorage`]'s cache of recent entries.
pub const ENTRY_CACHE_MAX: usize = 8192;

impl SledStorage {
    /// True once the store has a configuration (it was bootstrapped or received a snapshot).
    pub fn is_initialized(&self) -> bool {
        !self.conf_state.voters.is_empty() || !self.conf_state.learners.is_empty()
    }

    /// The cached hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The ConfState at the stored snapshot.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Metadata of the stored snapshot (index 0 if there is none yet).
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot_meta
    }

    /// The peer address registry at the stored snapshot (empty for stores that predate it).
    pub fn snapshot_registry(&self) -> &Registry {
        &self.snapshot_registry
    }

    /// The incarnation of this data directory: a random number drawn when it was created (or,
    /// for a store written before incarnations existed, when it was first opened since), so
    /// that a wiped and recreated directory is a different member to the rest of the cluster.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The id of the cluster this store belongs to, 0 until it is known.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Records the cluster id and flushes; a store keeps its first cluster id forever.
    ///
    /// # Panics
    ///
    /// If the store already belongs to another cluster (the callers check first).
    ///
    /// # Errors
    ///
    /// `Error::Storage` if the write or flush fails.
    pub fn set_cluster_id(&mut self, cluster_id: u64) -> Result<(), Error> {
        assert!(
            self.cluster_id == 0 || self.cluster_id == cluster_id,
            "store of cluster {:016x} moved to cluster {cluster_id:016x}",
            self.cluster_id
        );
        if self.cluster_id == cluster_id {
            return Ok(());
        }
        self.tree
            .insert(KEY_CLUSTER_ID, &cluster_id.to_be_bytes())
            .map_err(|e| storage_err("write cluster id", e))?;
        self.flush()?;
        self.cluster_id = cluster_id;
        Ok(())
    }

    /// The stored snapshot's state machine image, if a snapshot past index 0 was ever stored.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if the file cannot be read or is not a snapshot envelope.
    pub fn snapshot_data(&self) -> Result<Option<Vec<u8>>, Error> {
        if self.snapshot_meta.index == 0 {
            return Ok(None);
        }
        let envelope = self.stored_envelope()?;
        let (_, image) = decode_snapshot_data(&envelope)
            .map_err(|e| Error::Storage(format!("stored snapshot: {e}")))?;
        Ok(Some(image.to_vec()))
    }

    /// The stored snapshot's envelope, read from its file once and then kept in memory.
    fn stored_envelope(&self) -> Result<Bytes, Error> {
        let mut cached = self.envelope.lock().expect("envelope lock poisoned");
        if let Some(envelope) = &*cached {
            return Ok(envelope.clone());
        }
        let envelope = Bytes::from(self.files.read(self.snapshot_meta.index)?);
        *cached = Some(envelope.clone());
        Ok(envelope)
    }

    /// The snapshot files of this store, for a background thread that writes one.
    pub fn snapshot_files(&self) -> SnapshotFiles {
        self.files.clone()
    }

    /// Index of the first entry still in the log.
    pub fn first(&self) -> u64 {
        self.truncated_index + 1
    }

    /// Index of the last entry in the log (the truncated index if the log is empty).
    pub fn last(&self) -> u64 {
        self.last_index
    }

    /// Whether raft asked for a snapshot newer than the stored one since the last call.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    /// Stages `entries`, replacing any stored entries at or after the first one's index.
    ///
    /// # Panics
    ///
    /// If `entries` would leave a gap after the last entry, overwrite compacted entries, or are
    /// not consecutive.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if an entry does not encode.
    pub fn append(&mut self, batch: &mut Batch, entries: &[Entry]) -> Result<(), Error> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        assert!(
            first.index > self.truncated_index,
            "appending entry {} over the compacted log (truncated at {})",
            first.index,
            self.truncated_index
        );
        assert!(
            first.index <= self.last_index + 1,
            "appending entry {} leaves a gap after the last entry {}",
            first.index,
            self.last_index
        );
        for pair in entries.windows(2) {
            assert_eq!(
                pair[1].index,
                pair[0].index + 1,
                "entries are not consecutive"
            );
        }
        let last = entries.last().expect("non-empty");
        // Remove the stored suffix that the new entries do not overwrite key by key.
        for index in last.index + 1..=self.last_index {
            batch.remove(entry_key(index));
        }
        for entry in entries {
            batch.insert(entry_key(entry.index), encode("entry", entry)?);
        }
        self.last_index = last.index;
        self.last_term = last.term;
        self.cache_appended(entries);
        Ok(())
    }

    /// Keeps the cache a contiguous run ending at the entries just appended (they replace any
    /// cached entries at or after the first one).
    fn cache_appended(&mut self, entries: &[Entry]) {
        let first = entries[0].index;
        while self.cache.back().is_some_and(|e| e.index >= first) {
            self.cache.pop_back();
        }
        if self.cache.back().is_some_and(|e| e.index + 1 != first) {
            self.cache.clear();
        }
        let skip = entries.len().saturating_sub(ENTRY_CACHE_MAX);
        self.cache.extend(entries[skip..].iter().cloned());
        while self.cache.len() > ENTRY_CACHE_MAX {
            self.cache.pop_front();
        }
    }

    /// The cached entries `[low, high)`, if the cache holds all of them.
    fn cached(&self, low: u64, high: u64) -> Option<impl Iterator<Item = &Entry>> {
        let front = self.cache.front()?.index;
        let back = self.cache.back()?.index;
        if low < front || high > back + 1 || low >= high {
            return None;
        }
        let start = usize::try_from(low - front).ok()?;
        let count = usize::try_from(high - low).ok()?;
        Some(self.cache.iter().skip(start).take(count))
    }

    /// Stages a new hard state.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if it does not encode.
    pub fn set_hard_state(&mut self, batch: &mut Batch, hs: HardState) -> Result<(), Error> {
        batch.insert(KEY_HARD_STATE, encode("hard state", &hs)?);
        self.hard_state = hs;
        Ok(())
    }

    /// Records a new commit index without waiting for durability (raft does not need the commit
    /// index to be durable; a lost update is recomputed after restart). It is not logged: sled
    /// gets it with the next turn of the write-ahead log, and a replay after a crash may bring
    /// back the last logged one.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if the hard state does not encode.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), Error> {
        self.hard_state.commit = commit;
        let bytes = encode("hard state", &self.hard_state)?;
        // Not logged: it reaches sled with the next flush, unless a crash comes first.
        self.pending.insert(KEY_HARD_STATE.to_vec(), Some(bytes));
        Ok(())
    }

    /// Stages installing a snapshot received from the leader: the whole log is dropped, the
    /// truncated index/term, conf state and snapshot become the snapshot's, and the hard state's
    /// commit moves up to the snapshot index. `snapshot.data` is the state machine image (the
    /// caller has already split the wire envelope) and `registry` the registry that came with it.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if sled fails; `SnapshotOutOfDate` is reported as `Ok(false)` (raft
    /// never hands out such snapshots, but ignoring them is safe).
    pub fn apply_snapshot(
        &mut self,
        batch: &mut Batch,
        snapshot: &Snapshot,
        registry: &Registry,
    ) -> Result<bool, Error> {
        let meta = snapshot.get_metadata();
        if meta.index < self.first() {
            return Ok(false);
        }
        for item in self.tree.scan_prefix([ENTRY_PREFIX]).keys() {
            let key = item.map_err(|e| storage_err("scan entries", e))?;
            batch.remove(key);
        }
        let pending = self
            .pending
            .range(vec![ENTRY_PREFIX]..vec![ENTRY_PREFIX + 1]);
        for (key, _) in pending.filter(|(_, value)| value.is_some()) {
            batch.remove(key);
        }
        self.cache.clear();
        self.last_index = meta.index;
        self.last_term = meta.term;
        self.set_truncated(batch, meta.index, meta.term);
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.set_hard_state(batch, hs)?;
        self.stage_snapshot(batch, snapshot, registry)?;
        Ok(true)
    }

    /// Stages storing a snapshot of the local state machine taken at `index` (which must be
    /// applied, hence committed and in the log) with the configuration and peer registry in
    /// force at `index`.
    ///
    /// # Panics
    ///
    /// If `index` is not newer than the stored snapshot, or is past the last entry (checked
    /// before the file is written, so the stored snapshot's file is never overwritten).
    ///
    /// # Errors
    ///
    /// `Error::Storage` if sled or the file write fails.
    pub fn create_snapshot(
        &mut self,
        batch: &mut Batch,
        index: u64,
        conf_state: ConfState,
        registry: &Registry,
        data: Vec<u8>,
    ) -> Result<(), Error> {
        self.assert_new_snapshot_index(index);
        let envelope = self.files.write_image(index, registry, &data)?;
        self.record_snapshot(batch, index, conf_state, registry, envelope)
    }

    /// A snapshot of the local state machine must be newer than the stored one and of an entry
    /// in the log.
    fn assert_new_snapshot_index(&self, index: u64) {
        assert!(
            index > self.snapshot_meta.index,
            "snapshot at {index} is not newer than the stored one at {}",
            self.snapshot_meta.index
        );
        assert!(
            index <= self.last_index,
            "snapshot at {index} is past the last entry {}",
            self.last_index
        );
    }

    /// Stages recording a snapshot taken at `index` whose envelope ([`encode_snapshot_data`]
    /// of `registry` and the image) is already durable in its file ([`SnapshotFiles::write`]),
    /// with the configuration and peer registry in force at `index`. The file of the snapshot
    /// it replaces is removed once this is durable.
    ///
    /// # Panics
    ///
    /// If `index` is not newer than the stored snapshot, or is past the last entry.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if sled fails.
    pub fn record_snapshot(
        &mut self,
        batch: &mut Batch,
        index: u64,
        conf_state: ConfState,
        registry: &Registry,
        envelope: Bytes,
    ) -> Result<(), Error> {
        self.assert_new_snapshot_index(index);
        let term = self
            .term_of(index)
            .map_err(|e| storage_err("snapshot term", e))?;
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf_state);
        // Keep the invariant commit >= snapshot index durable together with the snapshot,
        // always: a commit index recorded by `set_commit` is not logged, so after a crash the
        // write-ahead log's replay may bring back an older hard state than the one in memory.
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(index);
        self.set_hard_state(batch, hs)?;
        self.stage_metadata(batch, meta, registry, Some(envelope))
    }

    /// Writes the file of `snapshot` (its data is the state machine image) now and stages its
    /// metadata (bootstrap, and snapshots received from the leader).
    fn stage_snapshot(
        &mut self,
        batch: &mut Batch,
        snapshot: &Snapshot,
        registry: &Registry,
    ) -> Result<(), Error> {
        let meta = snapshot.get_metadata();
        let envelope = if meta.index > 0 {
            Some(
                self.files
                    .write_image(meta.index, registry, snapshot.get_data())?,
            )
        } else {
            None
        };
        self.stage_metadata(batch, meta.clone(), registry, envelope)
    }

    fn stage_metadata(
        &mut self,
        batch: &mut Batch,
        meta: SnapshotMetadata,
        registry: &Registry,
        envelope: Option<Bytes>,
    ) -> Result<(), Error> {
        batch.insert(KEY_SNAP_META, encode("snapshot metadata", &meta)?);
        batch.insert(KEY_CONF_STATE, encode("conf state", meta.get_conf_state())?);
        batch.insert(KEY_SNAP_PEERS, encode_registry(registry));
        if self.snapshot_meta.index > 0 && self.snapshot_meta.index != meta.index {
            self.obsolete.push(self.snapshot_meta.index);
        }
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot_meta = meta;
        self.snapshot_registry = registry.clone();
        *self.envelope.lock().expect("envelope lock poisoned") = envelope;
        Ok(())
    }

    fn set_truncated(&mut self, batch: &mut Batch, index: u64, term: u64) {
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&index.to_be_bytes());
        value[8..].copy_from_slice(&term.to_be_bytes());
        batch.insert(KEY_TRUNCATED, &value[..]);
        self.truncated_index = index;
        self.truncated_term = term;
    }

    /// Stages removing every entry before `compact_index`; `first()` becomes `compact_index`.
    /// Compacting at or before the first index is a no-op (etcd #1784).
    ///
    /// The caller must never compact past its stored snapshot (entries no snapshot covers would
    /// be lost); the raft thread compacts only behind a snapshot it just stored.
    ///
    /// # Panics
    ///
    /// If `compact_index` is past the last index plus one.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if sled fails.
    pub fn compact(&mut self, batch: &mut Batch, compact_index: u64) -> Result<(), Error> {
        if compact_index <= self.first() {
            return Ok(());
        }
        assert!(
            compact_index <= self.last_index + 1,
            "compacting to {compact_index} past the last entry {} plus one",
            self.last_index
        );
        let term = self
            .term_of(compact_index - 1)
            .map_err(|e| storage_err("compaction term", e))?;
        for index in self.first()..compact_index {
            batch.remove(entry_key(index));
        }
        while self.cache.front().is_some_and(|e| e.index < compact_index) {
            self.cache.pop_front();
        }
        self.set_truncated(batch, compact_index - 1, term);
        Ok(())
    }

    /// If `sync`, logs `batch` as one atomic record of the write-ahead log and waits until it
    /// and everything written before survive a crash (`fdatasync`); otherwise the batch is not
    /// logged, reaches sled with the next turn of the log, and a crash before that loses it
    /// even if later synced writes survive (the raft thread writes unsynced only a hard state
    /// whose commit index alone moved, which raft recomputes). Either way it is visible to
    /// reads at once.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if the log or sled fails; the caller must then stop (fail closed).
    pub fn write(&mut self, batch: Batch, sync: bool) -> Result<(), Error> {
        if batch.is_empty() {
            if sync {
                self.wal.sync()?;
            }
        } else if !sync {
            // Not logged: an unsynced record followed by a synced one could be half lost to a
            // power failure, which the replay could not tell from damage (module `wal`).
            batch.merge_into(&mut self.pending);
        } else {
            let record = Wal::record(&batch);
            if !self.wal.fits(record.len()) {
                // The segment is full: what it holds goes to sled and a new one starts, BEFORE
                // this batch is written anywhere. A crash between sled's flush and the removal
                // of the old segment then replays that segment over exactly the state it ends
                // in (written this way round, it would replay over this batch's writes too,
                // and undo some of them).
                self.flush()?;
            }
            if self.wal.fits(record.len()) {
                self.wal.append(&record)?;
                batch.merge_into(&mut self.pending);
            } else {
                // Larger than a whole segment: straight to sled, atomically, and flushed (the
                // segment a crash in between would replay is the empty one just started).
                batch.merge_into(&mut self.pending);
                self.flush()?;
            }
        }
        if sync {
            for index in self.obsolete.drain(..) {
                self.files.remove(index);
            }
        }
        Ok(())
    }

    /// Writes everything logged since the last time to sled in one batch, flushes sled and
    /// starts a new, empty write-ahead log segment (when a segment is full, on graceful
    /// shutdown, and after the direct writes of `set_cluster_id`).
    ///
    /// # Errors
    ///
    /// `Error::Storage` if sled or the log fails.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.tree
            .apply_batch(wal::sled_batch(std::mem::take(&mut self.pending)))
            .map_err(|e| storage_err("apply the logged writes", e))?;
        self.db.flush().map_err(|e| storage_err("flush", e))?;
        self.wal.restart()
    }

    /// The value of `key`: written since sled was last written, or in sled.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, sled::Error> {
        match self.pending.get(key) {
            Some(value) => Ok(value.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }

    /// Calls `visit` with each stored entry in `[low, high)` in order (sled's, overlaid with
    /// the pending writes) until it returns false.
    fn visit_stored_entries(
        &self,
        low: u64,
        high: u64,
        mut visit: impl FnMut(&[u8]) -> raft::Result<bool>,
    ) -> raft::Result<()> {
        let range = entry_key(low).to_vec()..entry_key(high).to_vec();
        let mut stored = self.tree.range(range.clone()).peekable();
        let mut pending = self.pending.range(range).peekable();
        loop {
            let stored_key = match stored.peek() {
                Some(Ok((key, _))) => Some(key.to_vec()),
                Some(Err(_)) => {
                    return Err(raft_other(stored.next().expect("peeked").unwrap_err()));
                }
                None => None,
            };
            let next = match (stored_key, pending.peek()) {
                (None, None) => return Ok(()),
                // A pending write of the same key replaces sled's value (or removes it).
                (Some(s), Some((p, _))) if s >= **p => {
                    if s == **p {
                        stored.next();
                    }
                    pending.next().expect("peeked").1.clone()
                }
                (Some(_), _) => Some(
                    stored
                        .next()
                        .expect("peeked")
                        .map_err(raft_other)?
                        .1
                        .to_vec(),
                ),
                (None, Some(_)) => pending.next().expect("peeked").1.clone(),
            };
            if let Some(value) = next
                && !visit(&value)?
            {
                return Ok(());
            }
        }
    }

    fn entry_at(&self, index: u64) -> raft::Result<Entry> {
        let value = self
            .get(&entry_key(index))
            .map_err(raft_other)?
            .ok_or_else(|| raft_other(format!("entry {index} missing from the log")))?;
        Entry::parse_from_bytes(&value).map_err(raft_other)
    }

    fn term_of(&self, index: u64) -> raft::Result<u64> {
        if index == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if index < self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if index == self.last_index {
            return Ok(self.last_term);
        }
        if let Some(mut cached) = self.cached(index, index + 1)
            && let Some(entry) = cached.next()
        {
            return Ok(entry.term);
        }
        let entry = self.entry_at(index)?;
        assert_eq!(entry.index, index, "entry stored under the wrong key");
        Ok(entry.term)
    }
}

impl raft::Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last_index + 1,
            "entries [{low}, {high}) requested past the last index {}",
            self.last_index
        );
        let max_size = max_size.into();
        if let Some(cached) = self.cached(low, high) {
            let mut entries = Vec::new();
            let mut size = 0u64;
            for entry in cached {
                size += u64::from(entry.compute_size());
                if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                    break;
                }
                entries.push(entry.clone());
            }
            return Ok(entries);
        }
        let mut entries = Vec::with_capacity((high.saturating_sub(low)) as usize);
        let mut size = 0u64;
        self.visit_stored_entries(low, high, |value| {
            let entry = Entry::parse_from_bytes(value).map_err(raft_other)?;
            assert_eq!(
                entry.index,
                low + entries.len() as u64,
                "hole in the stored log"
            );
            size += u64::from(entry.compute_size());
            if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                return Ok(false);
            }
            entries.push(entry);
            Ok(true)
        })?;
        if entries.is_empty() && low < high {
            return Err(raft_other(format!("entries [{low}, {high}) missing")));
        }
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// The stored snapshot, with the peer registry inline ([`encode_snapshot_data`]). If it
    /// is older than `request_index`, or its configuration does not contain the recipient `to`
    /// (raft-rs refuses to restore such a snapshot: it happens when `to` was added after the
    /// snapshot was taken), the raft thread is asked for a fresh one and raft retries later.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let cs = self.snapshot_meta.get_conf_state();
        let has_recipient = cs.voters.contains(&to)
            || cs.learners.contains(&to)
            || cs.voters_outgoing.contains(&to);
        if self.snapshot_meta.index < request_index
            || self.snapshot_meta.index == 0
            || !has_recipient
        {
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let started = std::time::Instant::now();
        let envelope = self.stored_envelope().map_err(raft_other)?;
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(self.snapshot_meta.clone());
        tracing::info!(
            index = self.snapshot_meta.index,
            to,
            bytes = envelope.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stored snapshot handed to raft for sending"
        );
        snapshot.set_data(envelope);
        Ok(snapshot)
    }
}
