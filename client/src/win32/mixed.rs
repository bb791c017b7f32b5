//! Waits whose handles live in both backends: `WaitForMultipleObjects` (wait-any) and
//! `SignalObjectAndWait` over `Local\` (or unnamed) and cluster handles together, as in the
//! most common Win32 service loop: `WaitForMultipleObjects({shutdown_event, work_mutex},
//! FALSE, INFINITE)` with a private shutdown event and a shared mutex.
//!
//! A wait-any first looks without waiting: at the local objects (no network), then at the
//! cluster objects below the local winner's index (one request, only if there are any), so
//! that the lowest index wins among what is signaled at the call, and a ready local object
//! does not wait for an unreachable cluster. Otherwise both sides wait at once, for what is
//! left of the timeout: the calling thread in the local engine (a local mutex belongs to the
//! thread that takes it), the cluster wait on the facade's runtime. The first to be satisfied
//! ends the other: the cluster side cancels the local wait through its cancel word, the local
//! side stops the cluster wait, whose grant, if it raced the stop, the cluster gives back
//! itself (docs/architecture.md "Waits"). Only local grants are ever given back by this code,
//! because only the local engine can do it exactly.
//!
//! A wait-all that mixes the backends stays `ERROR_INVALID_PARAMETER` (87): taking objects
//! of two independent systems in one atomic step would need a commit protocol between them.
//! `SignalObjectAndWait` across backends signals, then waits: not atomic (a `PulseEvent`
//! provoked by the signal can be missed), which the docs of the facade say.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use super::create::with_segment;
use super::*;
use crate::WaitOutcome;

/// One side's part of a mixed wait: each handle with its index in the caller's array.
struct Split {
    local: Vec<(usize, LocalObj)>,
    remote: Vec<(usize, Entry)>,
}

fn split(handles: &[HANDLE]) -> Result<Split, Win32Error> {
    let mut local = Vec::new();
    let mut remote: Vec<(usize, Entry)> = Vec::new();
    for (i, &handle) in handles.iter().enumerate() {
        match global::lookup(handle, None)? {
            Slot::Local(obj) => local.push((i, obj)),
            Slot::Remote(entry) => {
                if remote
                    .first()
                    .is_some_and(|(_, e)| e.session.id() != entry.session.id())
                {
                    return Err(Win32Error::INVALID_HANDLE);
                }
                remote.push((i, entry));
            }
        }
    }
    Ok(Split { local, remote })
}

/// The outcome with its index mapped into the caller's array through `indexes`.
fn remap(outcome: WaitOutcome, indexes: &[usize]) -> WaitOutcome {
    match outcome {
        WaitOutcome::Signaled {
            index,
            fencing_token,
        } => WaitOutcome::Signaled {
            index: indexes.get(index).copied().unwrap_or(index),
            fencing_token,
        },
        WaitOutcome::Abandoned {
            index,
            fencing_token,
        } => WaitOutcome::Abandoned {
            index: indexes.get(index).copied().unwrap_or(index),
            fencing_token,
        },
        WaitOutcome::TimedOut => WaitOutcome::TimedOut,
    }
}

fn index_of(outcome: &WaitOutcome) -> Option<usize> {
    match outcome {
        WaitOutcome::Signaled { index, .. } | WaitOutcome::Abandoned { index, .. } => Some(*index),
        WaitOutcome::TimedOut => None,
    }
}

/// Cancels a local wait when dropped: the cluster side's task ends the local wait however it
/// ends (also if it panics or the runtime shuts down), so the calling thread never waits for
/// a side that is gone.
struct CancelOnDrop(Arc<AtomicU32>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        local::cancel(&self.0);
    }
}

/// Gives back what a local wait took (on the calling thread, which owns any mutex taken).
fn give_back_local(objs: &[LocalObj], taken: local::Taken) {
    let _ = with_segment(|seg| {
        local::give_back(seg, objs, false, taken);
        Ok(())
    });
}

/// `WaitForMultipleObjects(handles, FALSE, timeout)` over handles of both backends.
///
/// Only the local side is ever given back when both were satisfied: the local engine gives
/// back exactly (an abandoned mutex stays abandoned, an auto-reset signal is restored only if
/// no reset came since), while the cluster does so itself when a wait is cancelled. So when
/// both sides race in the blocking phase, the cluster's outcome stands even if the local
/// index is lower (the lowest-index rule holds for what is signaled at the call).
pub(super) fn wait_any(handles: &[HANDLE], timeout: Timeout) -> Result<WaitOutcome, Win32Error> {
    let deadline = timeout.as_duration().map(|d| std::time::Instant::now() + d);
    let Split { local, remote } = split(handles)?;
    if local.len() > local::CANCELLABLE_WAIT_OBJECTS_MAX {
        return Err(Win32Error::INVALID_PARAMETER);
    }
    // Checked before anything is taken, as Windows does.
    if local.iter().any(|(_, o)| o.access & SYNCHRONIZE == 0) {
        return Err(Win32Error::ACCESS_DENIED);
    }
    let session = remote
        .first()
        .map(|(_, e)| e.session.clone())
        .ok_or(Win32Error::INVALID_PARAMETER)?;
    let local_objs: Vec<LocalObj> = local.iter().map(|(_, o)| *o).collect();
    let local_indexes: Vec<usize> = local.iter().map(|(i, _)| *i).collect();
    let thread = thread::current_thread_id();
    thread::mark_may_own();

    // 1. What is signaled now, lowest index first: the local objects (no network), then the
    //    cluster objects below the local winner, if any (only they can beat it).
    let local_now = with_segment(|seg| {
        local::wait_cancellable(seg, &local_objs, false, Timeout::Millis(0), None)
    })?;
    let local_first = index_of(&local_now.outcome).map(|i| local_indexes[i]);
    let below: Vec<(usize, u64)> = remote
        .iter()
        .filter(|(i, _)| local_first.is_none_or(|l| *i < l))
        .map(|(i, e)| (*i, e.id))
        .collect();
    if !below.is_empty() {
        let ids: Vec<u64> = below.iter().map(|(_, id)| *id).collect();
        let indexes: Vec<usize> = below.iter().map(|(i, _)| *i).collect();
        let session = session.clone();
        let polled = block_on(|_| async move {
            session
                .wait(thread, &ids, false, Timeout::Millis(0))
                .await
                .map_err(|e| e.win32_error())
        });
        match polled {
            Ok(outcome) if index_of(&outcome).is_some() => {
                if local_first.is_some() {
                    give_back_local(&local_objs, local_now);
                }
                return Ok(remap(outcome, &indexes));
            }
            Ok(_) => {}
            // The cluster could not be asked: what the local side has stands.
            Err(_) if local_first.is_some() => {}
            Err(code) => return Err(code),
        }
    }
    if local_first.is_some() {
        return Ok(remap(local_now.outcome, &local_indexes));
    }
    let left = match deadline {
        None => Timeout::Infinite,
        Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
            // Rounded up to whole milliseconds: never ends before the caller's deadline.
            Some(left) if !left.is_zero() => Timeout::Millis(
                u32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u32::MAX - 1),
            ),
            _ => return Ok(WaitOutcome::TimedOut),
        },
    };

    // 2. Both sides wait; the first satisfied ends the other.
    let ids: Vec<u64> = remote.iter().map(|(_, e)| e.id).collect();
    let remote_indexes: Vec<usize> = remote.iter().map(|(i, _)| *i).collect();
    let cancel = Arc::new(AtomicU32::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let remote_task = {
        let (session, ids, cancel) = (session.clone(), ids.clone(), cancel.clone());
        block_on(|_| async move {
            Ok(tokio::spawn(async move {
                let _cancel_local = CancelOnDrop(cancel);
                tokio::select! {
                    outcome = session.wait(thread, &ids, false, left) => Some(outcome),
                    // Dropping the wait cancels it; a grant that raced is given back.
                    _ = stop_rx => None,
                }
            }))
        })?
    };
    let local_result =
        with_segment(|seg| local::wait_cancellable(seg, &local_objs, false, left, Some(&cancel)));
    let _ = stop_tx.send(());
    let remote_result = block_on(|_| async move { Ok(remote_task.await) });
    let local_taken = match local_result {
        Ok(taken) if index_of(&taken.outcome).is_some() => Some(taken),
        Ok(_) | Err(Win32Error::OPERATION_ABORTED) => None,
        Err(code) => {
            // The cluster side, if it was satisfied, stands; else the local failure.
            return match remote_result {
                Ok(Ok(Some(Ok(outcome)))) if index_of(&outcome).is_some() => {
                    Ok(remap(outcome, &remote_indexes))
                }
                _ => Err(code),
            };
        }
    };
    let remote_outcome = match remote_result {
        Ok(Ok(Some(Ok(outcome)))) => index_of(&outcome).is_some().then_some(outcome),
        Ok(Ok(Some(Err(e)))) if local_taken.is_none() => return Err(e.win32_error()),
        Ok(Ok(_)) => None,
        // The task failed (a panic, a runtime shutting down): the local side stands, if any.
        Ok(Err(_)) | Err(_) if local_taken.is_some() => None,
        Ok(Err(_)) | Err(_) => return Err(Win32Error::INTERNAL_ERROR),
    };
    match (local_taken, remote_outcome) {
        (Some(taken), Some(outcome)) => {
            give_back_local(&local_objs, taken);
            Ok(remap(outcome, &remote_indexes))
        }
        (Some(taken), None) => Ok(remap(taken.outcome, &local_indexes)),
        (None, Some(outcome)) => Ok(remap(outcome, &remote_indexes)),
        (None, None) => Ok(WaitOutcome::TimedOut),
    }
}

/// `SignalObjectAndWait` with the two handles in different backends: signals, then waits (not
/// atomic across backends).
pub(super) fn signal_and_wait(
    signal: HANDLE,
    wait_on: HANDLE,
    timeout: Timeout,
) -> Result<WaitOutcome, Win32Error> {
    let thread = thread::current_thread_id();
    // Both handles are checked before the signal, as Windows does.
    let target = global::lookup(wait_on, None)?;
    if let Slot::Local(obj) = &target
        && obj.access & SYNCHRONIZE == 0
    {
        return Err(Win32Error::ACCESS_DENIED);
    }
    match global::lookup(signal, None)? {
        Slot::Local(obj) => with_segment(|seg| match obj.kind {
            ObjectKind::Mutex => obj.release_mutex(seg),
            ObjectKind::Event => obj.set_event(seg),
            ObjectKind::Semaphore => obj.release_semaphore(seg, 1).map(|_| ()),
        })?,
        Slot::Remote(entry) => block_on(|_| async move {
            match entry.kind {
                ObjectKind::Mutex => entry.session.release_mutex(thread, entry.id).await,
                ObjectKind::Event => entry.session.set_event(entry.id).await,
                ObjectKind::Semaphore => entry
                    .session
                    .release_semaphore(entry.id, 1)
                    .await
                    .map(|_| ()),
            }
            .map_err(|e| e.win32_error())
        })?,
    }
    match target {
        Slot::Local(obj) => with_segment(|seg| local::wait(seg, &[obj], false, timeout)),
        Slot::Remote(entry) => {
            thread::mark_may_own();
            block_on(|_| async move {
                entry
                    .session
                    .wait(thread, &[entry.id], false, timeout)
                    .await
                    .map_err(|e| e.win32_error())
            })
        }
    }
}
