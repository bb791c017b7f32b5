//! A read-only picture of a local namespace for operators (`dlockctl local`).

use dlock_proto::vocab::Win32Error;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::segment::{OBJ_FREE, OBJ_LIVE, Segment};
use super::sys::FUTEX_TID_MASK;
use dlock_proto::vocab::ObjectKind;

/// What a local namespace holds at one moment (read under its lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSnapshot {
    /// The segment file.
    pub path: PathBuf,
    /// Attached processes.
    pub processes: Vec<LocalProcess>,
    /// Objects with handles, and closed objects still held by a mutex owner or a wait.
    pub objects: Vec<LocalObjectInfo>,
    /// Threads blocked in local waits.
    pub blocked_waits: usize,
}

/// An attached process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalProcess {
    /// Its slot in the process table.
    pub slot: u32,
    /// Its process id.
    pub pid: u32,
    /// False if it died and has not been reclaimed yet (the next create or open reclaims it).
    pub alive: bool,
}

/// One object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalObjectInfo {
    /// The name after `Local\`; `None` once the last handle closed (the slot waits for its
    /// mutex owner or its waits to go).
    pub name: Option<String>,
    /// The type.
    pub kind: ObjectKind,
    /// Open handles, all processes together.
    pub handles: u32,
    /// Threads waiting on it.
    pub waiters: u32,
    /// Mutex: the owner's kernel thread id, 0 if unowned.
    pub owner_tid: u32,
    /// Mutex: the previous owner died holding it and nobody has acquired it since.
    pub abandoned: bool,
    /// Event: signaled.
    pub signaled: bool,
    /// Event: manual-reset.
    pub manual_reset: bool,
    /// Semaphore: count and maximum.
    pub count: i32,
    /// Semaphore: maximum.
    pub maximum: i32,
}

impl Segment {
    /// Reads the namespace under its lock.
    pub fn snapshot(&self) -> Result<LocalSnapshot, Win32Error> {
        let g = self.lock()?;
        let processes = self
            .procs()
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state.load(Ordering::Relaxed) != 0)
            .map(|(i, p)| LocalProcess {
                slot: i as u32,
                pid: p.pid.load(Ordering::Relaxed),
                alive: !self.is_dead(i as u32),
            })
            .collect();
        let mut objects = Vec::new();
        for (i, m) in self.metas().iter().enumerate() {
            let state = m.state.load(Ordering::Relaxed);
            if state == OBJ_FREE {
                continue;
            }
            let kind = match m.kind.load(Ordering::Relaxed) {
                1 => ObjectKind::Mutex,
                2 => ObjectKind::Event,
                _ => ObjectKind::Semaphore,
            };
            let sync = &self.syncs()[i];
            // SAFETY: the mutex of an object slot, initialised with the segment.
            let word = unsafe { super::sys::lock_word(sync.mutex.get()) }.load(Ordering::SeqCst);
            let is_mutex = kind == ObjectKind::Mutex;
            let name = (state == OBJ_LIVE)
                .then(|| String::from_utf8_lossy(super::objects::name_of(&g.held, m)).into_owned())
                .filter(|n| !n.is_empty());
            objects.push(LocalObjectInfo {
                name,
                kind,
                handles: m.refs.load(Ordering::Relaxed),
                waiters: sync.waiters.load(Ordering::Relaxed),
                owner_tid: if is_mutex { word & FUTEX_TID_MASK } else { 0 },
                abandoned: is_mutex && sync.is_abandoned(),
                signaled: m.signaled.load(Ordering::Relaxed) != 0,
                manual_reset: m.manual_reset.load(Ordering::Relaxed) != 0,
                count: m.count.load(Ordering::Relaxed),
                maximum: m.maximum.load(Ordering::Relaxed),
            });
        }
        let blocked_waits = self
            .waiters()
            .iter()
            .filter(|w| w.proc.load(Ordering::Relaxed) != 0)
            .count();
        Ok(LocalSnapshot {
            path: self.path().to_path_buf(),
            processes,
            objects,
            blocked_waits,
        })
    }
}
