//! Waits whose handles live in both backends: `WaitForMultipleObjects` (wait-any) and
//! `SignalObjectAndWait` over `Local\` (or unnamed) and cluster handles together, as in the
//! most common Win32 service loop: `WaitForMultipleObjects({shutdown_event, work_mutex},
//! FALSE, INFINITE)` with a private shutdown event and a shared mutex.
//!
//! A wait-any first looks without waiting, in index order: the cluster side (one request),
//! then the local objects below the index the cluster could give, so that the lowest
//! signaled index wins among what is signaled at the call. Otherwise both sides wait at once:
//! the calling thread in the local engine (a local mutex belongs to the thread that takes
//! it), the cluster wait on the facade's runtime. The first to be satisfied ends the other:
//! the cluster side cancels the local wait through its cancel word, the local side stops the
//! cluster wait, whose grant, if it raced the stop, is given back by the client's cancellation
//! (docs/architecture.md "Waits"); if both were satisfied, the lower index wins and the other
//! is given back.
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

/// Gives back what a cluster wait-any took (its outcome in the cluster side's own indexes).
async fn give_back_remote(
    session: &Session,
    thread: u64,
    entries: &[(usize, Entry)],
    outcome: WaitOutcome,
) {
    let Some((_, entry)) = index_of(&outcome).and_then(|i| entries.get(i)) else {
        return;
    };
    let result = match entry.kind {
        ObjectKind::Mutex => session.release_mutex(thread, entry.id).await,
        ObjectKind::Semaphore => session.release_semaphore(entry.id, 1).await.map(|_| ()),
        ObjectKind::Event => match session.query(entry.id).await {
            // A manual-reset event was not consumed; an auto-reset one is set again.
            Ok(state) if state.manual_reset => Ok(()),
            _ => session.set_event(entry.id).await,
        },
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not give back a cluster grant a mixed wait did not use");
    }
}

/// `WaitForMultipleObjects(handles, FALSE, timeout)` over handles of both backends.
pub(super) fn wait_any(handles: &[HANDLE], timeout: Timeout) -> Result<WaitOutcome, Win32Error> {
    let Split { local, remote } = split(handles)?;
    if local.len() > local::CANCELLABLE_WAIT_OBJECTS_MAX {
        return Err(Win32Error::INVALID_PARAMETER);
    }
    let session = remote
        .first()
        .map(|(_, e)| e.session.clone())
        .ok_or(Win32Error::INVALID_PARAMETER)?;
    let ids: Vec<u64> = remote.iter().map(|(_, e)| e.id).collect();
    let remote_indexes: Vec<usize> = remote.iter().map(|(i, _)| *i).collect();
    let local_objs: Vec<LocalObj> = local.iter().map(|(_, o)| *o).collect();
    let local_indexes: Vec<usize> = local.iter().map(|(i, _)| *i).collect();
    let thread = thread::current_thread_id();
    thread::mark_may_own();

    // 1. What is signaled now, lowest index first.
    let now = {
        let (session, ids) = (session.clone(), ids.clone());
        block_on(|_| async move {
            session
                .wait(thread, &ids, false, Timeout::Millis(0))
                .await
                .map_err(|e| e.win32_error())
        })?
    };
    let remote_first = index_of(&now).map(|i| remote_indexes[i]);
    let below = remote_first.unwrap_or(usize::MAX);
    let lower: Vec<LocalObj> = local
        .iter()
        .filter(|(i, _)| *i < below)
        .map(|(_, o)| *o)
        .collect();
    if !lower.is_empty() {
        let taken = with_segment(|seg| {
            local::wait_cancellable(seg, &lower, false, Timeout::Millis(0), None)
        })?;
        if index_of(&taken.outcome).is_some() {
            if remote_first.is_some() {
                let (session, remote) = (session.clone(), &remote);
                let _ = block_on(|_| async move {
                    give_back_remote(&session, thread, remote, now).await;
                    Ok(())
                });
            }
            return Ok(remap(taken.outcome, &local_indexes));
        }
    }
    if remote_first.is_some() {
        return Ok(remap(now, &remote_indexes));
    }
    if timeout == Timeout::Millis(0) {
        return Ok(WaitOutcome::TimedOut);
    }

    // 2. Both sides wait; the first satisfied ends the other.
    let cancel = Arc::new(AtomicU32::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let remote_task = {
        let (session, ids, cancel) = (session.clone(), ids.clone(), cancel.clone());
        block_on(|_| async move {
            Ok(tokio::spawn(async move {
                let outcome = tokio::select! {
                    outcome = session.wait(thread, &ids, false, timeout) => Some(outcome),
                    // Dropping the wait cancels it; a grant that raced is given back.
                    _ = stop_rx => None,
                };
                local::cancel(&cancel);
                outcome
            }))
        })?
    };
    let local_result = with_segment(|seg| {
        local::wait_cancellable(seg, &local_objs, false, timeout, Some(&cancel))
    });
    let _ = stop_tx.send(());
    let remote_result = block_on(|_| async move {
        remote_task
            .await
            .map_err(|_| Win32Error::INTERNAL_ERROR)
            .map(|r| r.map(|r| r.map_err(|e| e.win32_error())))
    })?;
    let local_taken = match local_result {
        Ok(taken) if index_of(&taken.outcome).is_some() => Some(taken),
        Ok(_) | Err(Win32Error::OPERATION_ABORTED) => None,
        Err(code) => {
            // The local side failed; give back anything the cluster side took.
            if let Some(Ok(outcome)) = remote_result {
                let (session, remote) = (session.clone(), &remote);
                let _ = block_on(|_| async move {
                    give_back_remote(&session, thread, remote, outcome).await;
                    Ok(())
                });
            }
            return Err(code);
        }
    };
    let remote_outcome = match remote_result {
        Some(Ok(outcome)) if index_of(&outcome).is_some() => Some(outcome),
        Some(Ok(_)) | None => None,
        Some(Err(code)) => {
            if let Some(taken) = local_taken {
                // The local side was satisfied: that outcome stands.
                tracing::debug!(%code, "the cluster half of a mixed wait failed after the local half won");
                return Ok(remap(taken.outcome, &local_indexes));
            }
            return Err(code);
        }
    };
    match (local_taken, remote_outcome) {
        (Some(taken), Some(outcome)) => {
            let l = remap(taken.outcome, &local_indexes);
            let r = remap(outcome, &remote_indexes);
            if index_of(&l) < index_of(&r) {
                let (session, remote) = (session.clone(), &remote);
                let _ = block_on(|_| async move {
                    give_back_remote(&session, thread, remote, outcome).await;
                    Ok(())
                });
                Ok(l)
            } else {
                with_segment(|seg| {
                    local::give_back(seg, &local_objs, false, taken);
                    Ok(())
                })?;
                Ok(r)
            }
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
    match global::lookup(wait_on, None)? {
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
