//! Snapshots on the raft thread: installing one received from the leader, and building this
//! node's own in the background ([`SnapshotBuild`]), then recording it and compacting the log.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Snapshot};

use crate::Error;
use crate::storage::{self, Batch, Registry};

use super::worker::Worker;

/// A snapshot of the state machine at `index` that a background thread is serialising and
/// writing to its file; the raft thread records it (and compacts the log) once it is durable.
pub(super) struct SnapshotBuild {
    index: u64,
    /// The configuration and peer registry at `index`.
    conf_state: ConfState,
    registry: Registry,
    started: Instant,
    /// The envelope written, how long serialising took, how long wrapping and writing it took.
    pub(super) thread: JoinHandle<Result<(bytes::Bytes, Duration, Duration), Error>>,
}

impl Worker {
    /// Restores the state machine from a leader's snapshot and stages it into storage.
    pub(super) fn install_snapshot(
        &mut self,
        batch: &mut Batch,
        snapshot: &Snapshot,
    ) -> Result<bool, Error> {
        let meta = snapshot.get_metadata();
        if meta.index < self.raw.store().first() {
            tracing::warn!(index = meta.index, "ignoring out-of-date snapshot");
            return Ok(false);
        }
        let (registry, image) = storage::decode_snapshot_data(snapshot.get_data())
            .map_err(|e| Error::StateMachine(format!("snapshot from the leader: {e}")))?;
        tracing::info!(
            index = meta.index,
            term = meta.term,
            bytes = image.len(),
            voters = ?meta.get_conf_state().voters,
            learners = ?meta.get_conf_state().learners,
            peers = ?registry.addresses,
            incarnations = ?registry.incarnations,
            "installing snapshot"
        );
        let started = Instant::now();
        self.sm
            .restore(meta.index, image)
            .map_err(Error::StateMachine)?;
        tracing::info!(
            index = meta.index,
            restore_ms = started.elapsed().as_millis() as u64,
            "state machine restored from snapshot"
        );
        let mut local = Snapshot::default();
        local.set_metadata(meta.clone());
        local.set_data(image.to_vec().into());
        let staged = self
            .raw
            .mut_store()
            .apply_snapshot(batch, &local, &registry)?;
        assert!(staged, "snapshot newer than the log was not staged");
        self.applied = meta.index;
        self.conf_state = meta.get_conf_state().clone();
        self.shared.trust.set_registry(&registry);
        self.registry = registry;
        self.membership_index = meta.index;
        self.membership_dirty = true;
        self.snapshots += 1;
        self.snapshot_bytes = image.len() as u64;
        // Anything proposed at or below the snapshot index was decided elsewhere.
        let later = self.proposals.split_off(&(meta.index + 1));
        for (_, proposal) in std::mem::replace(&mut self.proposals, later) {
            let _ = proposal.reply.send(Err(Error::Dropped));
        }
        Ok(true)
    }

    /// Takes a snapshot every `snapshot_interval_entries` applied entries, or when raft asked
    /// for one newer than the stored one, and records it once built.
    ///
    /// The raft thread only freezes the state machine
    /// ([`StateMachine::snapshot`](crate::StateMachine::snapshot), a cheap copy-on-write
    /// clone); a background thread serialises the frozen copy and writes it to its file, and a
    /// later pass of the loop records it in the store and compacts the log. So the raft thread
    /// never serialises or writes a snapshot of its own state, whatever its size. One build at
    /// a time.
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), Error> {
        if let Some(build) = &self.snapshot_build {
            if !build.thread.is_finished() {
                return Ok(());
            }
            let build = self.snapshot_build.take().expect("checked above");
            self.record_snapshot(build)?;
        }
        let stored = self.raw.store().snapshot_metadata().index;
        if self.applied <= stored {
            return Ok(());
        }
        // Consumed whenever no build runs, so a request satisfied by this build does not start
        // another one right after it.
        let wanted = self.raw.store().take_snapshot_wanted();
        if self.applied - stored < self.snapshot_interval_entries && !wanted {
            return Ok(());
        }
        let started = Instant::now();
        let job = self.sm.snapshot();
        let index = self.applied;
        let registry = self.registry.clone();
        let files = self.raw.store().snapshot_files();
        let image_registry = registry.clone();
        let thread = std::thread::Builder::new()
            .name(format!("snapshot-{}", self.id))
            .spawn(move || {
                let began = Instant::now();
                let image = job();
                let serialised = began.elapsed();
                let began = Instant::now();
                let envelope = files.write_image(index, &image_registry, &image)?;
                Ok((envelope, serialised, began.elapsed()))
            })
            .map_err(|e| Error::Storage(format!("spawn snapshot thread: {e}")))?;
        tracing::debug!(
            index,
            freeze_us = started.elapsed().as_micros() as u64,
            "snapshot frozen, building in the background"
        );
        self.snapshot_build = Some(SnapshotBuild {
            index,
            conf_state: self.conf_state.clone(),
            registry,
            started,
            thread,
        });
        Ok(())
    }

    /// Records a finished background build and compacts the log behind it. A build that a
    /// snapshot from the leader overtook meanwhile is dropped (its file with it).
    fn record_snapshot(&mut self, build: SnapshotBuild) -> Result<(), Error> {
        let SnapshotBuild {
            index,
            conf_state,
            registry,
            started,
            thread,
        } = build;
        let (envelope, serialised, written) = match thread.join() {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::StateMachine(format!(
                    "the snapshot build at index {index} panicked"
                )));
            }
        };
        let bytes = envelope.len();
        let store = self.raw.mut_store();
        if index <= store.snapshot_metadata().index {
            tracing::info!(
                index,
                stored = store.snapshot_metadata().index,
                "dropping a snapshot build overtaken by a snapshot from the leader"
            );
            store
                .snapshot_files()
                .remove_stale(index, store.snapshot_metadata().index);
            return Ok(());
        }
        let recording = Instant::now();
        let compact_to = index.saturating_sub(self.log_tail_entries) + 1;
        let mut batch = Batch::default();
        store.record_snapshot(&mut batch, index, conf_state, &registry, envelope)?;
        store.compact(&mut batch, compact_to)?;
        let flushing = Instant::now();
        store.write(batch, true)?;
        self.flushed(flushing);
        self.snapshots += 1;
        self.snapshot_bytes = bytes as u64;
        tracing::info!(
            index,
            bytes,
            first_index = compact_to,
            serialise_ms = serialised.as_millis() as u64,
            write_ms = written.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            record_ms = recording.elapsed().as_millis() as u64,
            "snapshot stored, log compacted (the raft thread was busy only for record_ms)"
        );
        Ok(())
    }
}
