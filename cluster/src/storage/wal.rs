//! The write-ahead log that makes each `Ready`'s batch durable with one `fdatasync`, instead of
//! a sled flush.
//!
//! # Why
//!
//! Measured on the 2-core VM (docs/performance.md): a sled `flush()` of one small batch costs
//! about 180 µs and as much CPU, because sled hands its buffers to its I/O threads and waits
//! for them (a dozen futex hand-offs per flush). Appending the same bytes to a file whose
//! blocks are already written and calling `fdatasync` costs about 85 µs and 35 µs of CPU. And
//! merely *applying* a batch to sled makes it write and `sync_file_range` a buffer on its I/O
//! threads, flush or not. Every node writes once per `Ready`: sled's writing was about a third
//! of the cluster's CPU per commit.
//!
//! # How
//!
//! [`SledStorage::write`](super::SledStorage::write) appends the batch's operations to this log
//! as one record (durable when `fdatasync` returns) and keeps them in memory, the latest value
//! of each key, where reads look first. sled gets them only when the log's segment is full (and
//! on shutdown): in one batch, then one flush; once it returns, everything is durable in sled
//! and the log starts a new, empty segment.
//!
//! Opening replays every record of the log, in order, into the tree, then flushes sled and
//! starts a new segment. Each operation writes or removes a whole value, and sled holds at
//! most the writes up to the end of the oldest segment left (a segment turns over *before* the
//! write that did not fit in it is logged, and is removed only after sled's flush), so the
//! replay ends in the state after the last durable record, whatever sled had written out on
//! its own. The one exception is the commit index that `SledStorage::set_commit` records
//! without logging: a replay may bring back the last logged one, which raft recomputes; a
//! recorded snapshot logs the hard state with it, so it never falls behind a snapshot.
//!
//! # Format
//!
//! A segment is a file `wal/<sequence, 16 hex digits>.log` of [`SEGMENT_BYTES`] (by default;
//! `Config::wal_segment_bytes`), written full
//! of zeros and synced when it is created, so that appending never changes the file's size or
//! block map and `fdatasync` writes only the data. Records follow each other from offset 0:
//!
//! ```text
//! u32 LE  payload length (> 0)
//! u32 LE  CRC-32 of the payload
//! payload, then zeros up to the next multiple of 8 bytes (a header never straddles sectors);
//! the payload holds operations, each  u8 tag (1 insert, 2 remove) ‖ u32 LE key length ‖ key
//!                            [‖ u32 LE value length ‖ value   for an insert]
//! ```
//!
//! A zero length ends the segment. Only synced writes are logged, each followed by its
//! `fdatasync` before the next, so a write torn by a crash is the last record and only zeros
//! follow it: such a record (its CRC does not match) was never acknowledged, and the replay
//! stops there with a warning. A bad record followed by anything else, or a length that runs
//! past the segment, is damage: opening fails rather than dropping records that may have been
//! acknowledged.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// Size of one segment. A record that does not fit in what is left makes the storage flush
/// sled and start a new segment instead (so a record larger than a segment is never written).
///
/// Smaller segments turn over more often and each turn costs less: the turn writes the
/// segment's writes to sled and flushes it on the raft thread (8 MiB turns stalled it for
/// 250-400 ms under 64 busy clients; 1 MiB turns take a few tens of ms).
pub const SEGMENT_BYTES: u64 = 1 << 20;
/// The smallest segment size accepted (tests use it to make segments fill often).
pub const SEGMENT_BYTES_MIN: u64 = 4 << 10;
/// The largest segment size accepted (a replay reads a whole segment into memory).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

const HEADER_BYTES: usize = 8;
const TAG_INSERT: u8 = 1;
const TAG_REMOVE: u8 = 2;

/// Writes staged for one atomic, durable write: inserts and removes of keys of the raft tree,
/// in order (a later operation on a key wins).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    /// Stages `key = value`.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }

    /// Stages removing `key`.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push((key.as_ref().to_vec(), None));
    }

    /// True if nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Records the operations in `pending`, the latest value of each key.
    pub(super) fn merge_into(self, pending: &mut Latest) {
        for (key, value) in self.ops {
            pending.insert(key, value);
        }
    }

    /// The record payload (see the module docs).
    fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .ops
            .iter()
            .map(|(k, v)| 5 + k.len() + v.as_ref().map_or(0, |v| 4 + v.len()))
            .sum();
        let mut out = Vec::with_capacity(HEADER_BYTES + size);
        out.extend_from_slice(&[0; HEADER_BYTES]);
        for (key, value) in &self.ops {
            out.push(if value.is_some() {
                TAG_INSERT
            } else {
                TAG_REMOVE
            });
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
            if let Some(value) = value {
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
        }
        let payload_len = (out.len() - HEADER_BYTES) as u32;
        let crc = crc32fast::hash(&out[HEADER_BYTES..]);
        out[..4].copy_from_slice(&payload_len.to_le_bytes());
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        // Records start 8-byte aligned, so a header never straddles two sectors.
        out.resize(out.len().next_multiple_of(HEADER_BYTES), 0);
        out
    }

    /// Decodes a record payload; `None` if it is malformed.
    fn decode(mut payload: &[u8]) -> Option<Batch> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if bytes.len() < n {
                return None;
            }
            let (head, rest) = bytes.split_at(n);
            *bytes = rest;
            Some(head)
        }
        fn take_len(bytes: &mut &[u8]) -> Option<usize> {
            let raw = take(bytes, 4)?;
            Some(u32::from_le_bytes(raw.try_into().ok()?) as usize)
        }
        let mut batch = Batch::default();
        while !payload.is_empty() {
            let tag = take(&mut payload, 1)?[0];
            let key_len = take_len(&mut payload)?;
            let key = take(&mut payload, key_len)?.to_vec();
            let value = match tag {
                TAG_INSERT => {
                    let len = take_len(&mut payload)?;
                    Some(take(&mut payload, len)?.to_vec())
                }
                TAG_REMOVE => None,
                _ => return None,
            };
            batch.ops.push((key, value));
        }
        Some(batch)
    }
}

/// The latest value of each key (`None`: removed), as accumulated by [`Batch::merge_into`].
pub(super) type Latest = std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// `latest` as one sled batch (atomic within a tree).
pub(super) fn sled_batch(latest: Latest) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in latest {
        match value {
            Some(value) => batch.insert(key, value),
            None => batch.remove(key),
        }
    }
    batch
}

/// The log: the current segment and where the next record goes.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    file: File,
    sequence: u64,
    offset: u64,
    /// Size of each segment this handle creates.
    segment_bytes: u64,
}

impl Wal {
    /// Opens the log in `dir` (created if missing) and returns it with the batches of every
    /// record in it, oldest first, for the caller to replay. Call [`Wal::restart`] once they
    /// are durable elsewhere, before appending.
    ///
    /// # Errors
    ///
    /// `Error::Storage` if the directory or a segment cannot be read.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Wal, Vec<Batch>), Error> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&segment_bytes) {
            return Err(Error::Storage(format!(
                "write-ahead log segment size {segment_bytes} is outside \
                 [{SEGMENT_BYTES_MIN}, {SEGMENT_BYTES_MAX}]"
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
        let mut segments = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| io_err("list", dir, e))? {
            let item = item.map_err(|e| io_err("list", dir, e))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(sequence) = segment_sequence(name) {
                segments.push(sequence);
            } else if name.ends_with(".tmp") {
                // A segment whose creation a crash interrupted: never written to.
                let _ = std::fs::remove_file(item.path());
            }
        }
        segments.sort_unstable();
        let mut batches = Vec::new();
        for &sequence in &segments {
            let path = segment_path(dir, sequence);
            read_segment(&path, &mut batches)?;
        }
        let sequence = segments.last().copied().unwrap_or(0);
        let wal = if segments.is_empty() {
            Wal::create(dir, 1, segment_bytes)?
        } else {
            // Appending resumes only after `restart`; until then this handle is not written.
            let path = segment_path(dir, sequence);
            let file = File::options()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err("open", &path, e))?;
            Wal {
                dir: dir.to_owned(),
                file,
                sequence,
                // Nothing is appended to a replayed segment: restart() moves on.
                offset: segment_bytes,
                segment_bytes,
            }
        };
        Ok((wal, batches))
    }

    /// Starts a new, empty segment and removes the older ones. Call only once everything the
    /// log held is durable elsewhere (sled flushed).
    ///
    /// # Errors
    ///
    /// `Error::Storage` if the new segment cannot be written or synced.
    pub fn restart(&mut self) -> Result<(), Error> {
        let next = Wal::create(&self.dir, self.sequence + 1, self.segment_bytes)?;
        let old = std::mem::replace(self, next);
        drop(old.file);
        for sequence in segments_before(&self.dir, self.sequence)? {
            let path = segment_path(&self.dir, sequence);
            std::fs::remove_file(&path).map_err(|e| io_err("remove", &path, e))?;
        }
        // A removal that a power loss undid could bring back a segment without its successor.
        sync_dir(&self.dir)
    }

    /// True if a record of `batch` fits in what is left of the segment.
    pub fn fits(&self, record_bytes: usize) -> bool {
        self.offset + record_bytes as u64 <= self.segment_bytes
    }

    /// The record bytes of `batch`.
    pub fn record(batch: &Batch) -> Vec<u8> {
        batch.encode()
    }

    /// Appends `record` (from [`Wal::record`], which must fit) and waits until it is durable
    /// (`fdatasync`).
    ///
    /// # Errors
    ///
    /// `Error::Storage` if the write or the sync fails (the caller stops: fail closed).
    pub fn append(&mut self, record: &[u8]) -> Result<(), Error> {
        assert!(self.fits(record.len()), "a WAL record that does not fit");
        // An empty payload would read as the end of the segment.
        assert!(record.len() > HEADER_BYTES, "an empty WAL record");
        let path = segment_path(&self.dir, self.sequence);
        self.file
            .write_all_at(record, self.offset)
            .map_err(|e| io_err("write", &path, e))?;
        self.offset += record.len() as u64;
        self.file
            .sync_data()
            .map_err(|e| io_err("fdatasync", &path, e))
    }

    /// Waits until every record appended so far is durable (`fdatasync`).
    ///
    /// # Errors
    ///
    /// `Error::Storage` if the sync fails.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.file
            .sync_data()
            .map_err(|e| io_err("fdatasync", &segment_path(&self.dir, self.sequence), e))
    }

    /// Creates segment `sequence` full of zeros, synced, and its directory entry synced.
    fn create(dir: &Path, sequence: u64, segment_bytes: u64) -> Result<Wal, Error> {
        let path = segment_path(dir, sequence);
        let tmp = path.with_extension("tmp");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_err("create", &tmp, e))?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < segment_bytes {
            let n = zeros.len().min((segment_bytes - at) as usize);
            file.write_all_at(&zeros[..n], at)
                .map_err(|e| io_err("zero-fill", &tmp, e))?;
            at += n as u64;
        }
        file.sync_all().map_err(|e| io_err("sync", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err("rename", &tmp, e))?;
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_owned(),
            file,
            sequence,
            offset: 0,
            segment_bytes,
        })
    }
}

fn segment_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:016x}.log"))
}

/// The sequence number of a segment file named as [`segment_path`] names it.
fn segment_sequence(file_name: &str) -> Option<u64> {
    u64::from_str_radix(file_name.strip_suffix(".log")?, 16).ok()
}

fn segments_before(dir: &Path, sequence: u64) -> Result<Vec<u64>, Error> {
    let mut older = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| io_err("list", dir, e))? {
        let item = item.map_err(|e| io_err("list", dir, e))?;
        if let Some(s) = item.file_name().to_str().and_then(segment_sequence)
            && s < sequence
        {
            older.push(s);
        }
    }
    Ok(older)
}

/// Appends the batches of the records in segment `path` to `batches`, stopping at the end or
/// at a torn record.
fn read_segment(path: &Path, batches: &mut Vec<Batch>) -> Result<(), Error> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_err("read", path, e))?;
    let mut at = 0usize;
    while at + HEADER_BYTES <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len == 0 {
            return Ok(());
        }
        let start = at + HEADER_BYTES;
        // Segments are zeroed before use and a torn write only leaves bytes unwritten (zero),
        // so a length that runs past the segment is damage, not a torn write.
        if start.saturating_add(len) > bytes.len() {
            return Err(damaged(path, at));
        }
        let batch = bytes
            .get(start..start + len)
            .filter(|payload| crc32fast::hash(payload) == crc)
            .and_then(Batch::decode);
        let Some(batch) = batch else {
            // A write torn by a crash is the last one: nothing but zeros follows the span its
            // header claims. Anything else is damage to records that may have been
            // acknowledged: refuse to start rather than lose them silently.
            if bytes[start + len..].iter().any(|&b| b != 0) {
                return Err(damaged(path, at));
            }
            tracing::warn!(
                segment = %path.display(),
                offset = at,
                "write-ahead log ends in a torn record (a write a crash interrupted before it \
                 was acknowledged): replay stops there"
            );
            return Ok(());
        };
        batches.push(batch);
        at = (start + len).next_multiple_of(HEADER_BYTES);
    }
    Ok(())
}

/// The error for a segment whose records cannot be trusted.
fn damaged(path: &Path, at: usize) -> Error {
    Error::Storage(format!(
        "write-ahead log segment {} has a damaged record at offset {at} that is not a write \
         torn by a crash (more data follows it, or its length runs past the segment): refusing \
         to start, since records it may hide could have been acknowledged. The segment is left \
         as it is. Do not delete the log to get past this: bring the node back as a new, empty \
         member (docs/operations.md, \"Replacing a node's disk\")",
        path.display()
    ))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync directory", dir, e))
}

fn io_err(what: &str, path: &Path, err: std::io::Error) -> Error {
    Error::Storage(format!("write-ahead log: {what} {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(i: u32) -> Batch {
        let mut b = Batch::default();
        b.insert(i.to_be_bytes(), vec![i as u8; (i % 50) as usize]);
        b.remove((i + 1000).to_be_bytes());
        b
    }

    #[test]
    fn records_replay_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, replay) = Wal::open(dir.path(), SEGMENT_BYTES_MIN * 4).unwrap();
        assert!(replay.is_empty());
        for i in 0..100 {
            wal.append(&Wal::record(&batch(i))).unwrap();
        }
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), SEGMENT_BYTES_MIN * 4).unwrap();
        assert_eq!(replay, (0..100).map(batch).collect::<Vec<_>>());
    }

    #[test]
    fn restart_starts_empty_and_removes_the_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_MIN * 4).unwrap();
        wal.append(&Wal::record(&batch(1))).unwrap();
        drop(wal);
        let (mut wal, replay) = Wal::open(dir.path(), SEGMENT_BYTES_MIN * 4).unwrap();
        assert_eq!(replay.len(), 1);
        wal.restart().unwrap();
        wal.append(&Wal::record(&batch(2))).unwrap();
        drop(wal);
        let (_, replay) = Wal::open(dir.path(), SEGMENT_BYTES_MIN * 4).unwrap();
        assert_eq!(replay, vec![batch(2)]);
        let logs = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(logs, 1, "only the new segment is left");
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_ones_before_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_MIN * 4).unwrap();
        let mut ends = Vec::new();
        for i in 0..5 {
            wal.append(&Wal::record(&batch(i + 10))).unwrap();
            ends.push(wal.offset);
        }
        let path = segment_path(dir.path(), wal.sequence);
        drop(wal);
        // Tear the last record: zero its second half (a write cut short).
        let file = File::options().write(true).open(&path).unwrap();
        let (start, end) = (ends[3], ends[4]);
        let middle = (start + end) / 2;
        file.write_all_at(&vec![0; (end - middle) as usize], middle)
            .unwrap();
        let (_, replay) = Wal::open(dir.path(), SEGMENT_BYTES_MIN * 4).unwrap();
        assert_eq!(replay, (10..14).map(batch).collect::<Vec<_>>());
    }

    #[test]
    fn a_damaged_record_followed_by_more_records_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_MIN * 4).unwrap();
        let mut ends = Vec::new();
        for i in 0..5 {
            wal.append(&Wal::record(&batch(i))).unwrap();
            ends.push(wal.offset);
        }
        let path = segment_path(dir.path(), wal.sequence);
        drop(wal);
        let file = File::options().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], ends[1] + HEADER_BYTES as u64)
            .unwrap();
        let err = Wal::open(dir.path(), SEGMENT_BYTES_MIN * 4).unwrap_err();
        assert!(err.to_string().contains("damaged record"), "{err}");
        assert!(path.exists(), "the damaged segment is kept");
    }

    #[test]
    fn a_length_running_past_the_segment_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_MIN).unwrap();
        wal.append(&Wal::record(&batch(1))).unwrap();
        let (at, path) = (wal.offset, segment_path(dir.path(), wal.sequence));
        wal.append(&Wal::record(&batch(2))).unwrap();
        drop(wal);
        let file = File::options().write(true).open(&path).unwrap();
        file.write_all_at(&(SEGMENT_BYTES_MIN as u32).to_le_bytes(), at)
            .unwrap();
        let err = Wal::open(dir.path(), SEGMENT_BYTES_MIN).unwrap_err();
        assert!(err.to_string().contains("damaged record"), "{err}");
    }

    #[test]
    fn a_crash_while_creating_a_segment_leaves_nothing_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0000000000000002.tmp"), [1, 2, 3]).unwrap();
        let (wal, replay) = Wal::open(dir.path(), SEGMENT_BYTES_MIN * 4).unwrap();
        assert!(replay.is_empty());
        assert!(!dir.path().join("0000000000000002.tmp").exists());
        drop(wal);
    }

    #[test]
    fn malformed_payloads_do_not_decode() {
        let mut b = Batch::default();
        b.insert(b"k", b"v");
        let record = Wal::record(&b);
        let len = u32::from_le_bytes(record[..4].try_into().unwrap()) as usize;
        assert_eq!(
            record.len() % HEADER_BYTES,
            0,
            "records are padded to 8 bytes"
        );
        let payload = &record[HEADER_BYTES..HEADER_BYTES + len];
        assert_eq!(Batch::decode(payload), Some(b));
        assert_eq!(Batch::decode(&payload[..payload.len() - 1]), None);
        let mut bad_tag = payload.to_vec();
        bad_tag[0] = 9;
        assert_eq!(Batch::decode(&bad_tag), None);
    }
}
