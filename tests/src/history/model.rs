//! The model the checks reason about, replayed from a [`History`]: each client's acquires and
//! releases of each mutex are replayed in order (tracking recursion depth and whether the
//! replay is still certain) to reconstruct the mutex *grants* with the window in which each
//! took effect and how it ended; `keep_open` creates give the *pins* (objects known to exist
//! from some moment on). See "What is checked" in the [`history`](super) module documentation.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::checker::Checker;
use super::{ClientId, History, Nanos, ObjectKind, Op, OpId, Outcome, ViolationKind};

/// How a reconstructed grant ended, as far as the history shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HoldEnd {
    /// Certain replay, and no release of it can have been applied: if anyone was granted the
    /// mutex after it, its owner ended (abandonment).
    NotReleased,
    /// Certain replay: this acknowledged release ended it.
    Released(OpId),
    /// Unknown.
    Ambiguous,
}

/// One grant of a mutex (a new owner at one log index), with the window in which it took
/// effect.
#[derive(Clone, Debug)]
pub(super) struct Grant {
    pub(super) mutex: String,
    pub(super) client: ClientId,
    pub(super) token: u64,
    pub(super) abandoned: bool,
    /// The first record that reported the token.
    pub(super) first: OpId,
    pub(super) lo: Nanos,
    pub(super) hi: Nanos,
    pub(super) end: HoldEnd,
}

/// Replay state of one (client, mutex) pair.
#[derive(Default)]
struct Walk {
    tainted: bool,
    depth: u32,
    current: Option<usize>,
    earliest_unknown_acquire: Option<Nanos>,
}

/// A valid pin of one name: the object exists from `from` on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pin {
    pub(super) op: OpId,
    pub(super) from: Nanos,
}

/// Valid pins per name.
pub(super) struct Pins {
    /// The object exists from `from` on.
    pub(super) exists: HashMap<String, Pin>,
    /// ... and is a manual-reset event (the pin created it).
    pub(super) manual: HashMap<String, Pin>,
}

impl<'h> Checker<'h> {
    /// Replays each client's acquires and releases to reconstruct grants and how they ended.
    pub(super) fn grants(&mut self) -> Vec<Grant> {
        let mut grants: Vec<Grant> = Vec::new();
        for ids in self.by_client().values() {
            let mut walks: HashMap<String, Walk> = HashMap::new();
            // (mutex, token) -> grant index, for this client.
            let mut seen: HashMap<(String, u64), usize> = HashMap::new();
            let mut lost = false;
            for &id in ids {
                let r = self.h.get(id);
                let (mutex, is_acquire) = match &r.op {
                    Op::Acquire { mutex, .. } => (mutex, true),
                    Op::Release { mutex } => (mutex, false),
                    Op::LostSession => {
                        // Open holds end here, without a release (their end stays as it is).
                        for w in walks.values_mut() {
                            w.tainted = true;
                            w.depth = 0;
                            w.current = None;
                        }
                        lost = true;
                        continue;
                    }
                    _ => continue,
                };
                let w = walks.entry(mutex.clone()).or_insert_with(|| Walk {
                    tainted: lost,
                    ..Walk::default()
                });
                let outcome = r.outcome();
                if outcome == Outcome::Unknown {
                    if is_acquire {
                        let e = w.earliest_unknown_acquire.get_or_insert(r.invoke);
                        *e = (*e).min(r.invoke);
                    }
                    if !w.tainted
                        && let Some(cur) = w.current
                    {
                        grants[cur].end = HoldEnd::Ambiguous;
                    }
                    w.tainted = true;
                    continue;
                }
                match (is_acquire, outcome) {
                    (true, Outcome::Acquired { token, abandoned }) => {
                        let hi = r.hi();
                        if !w.tainted {
                            if let Some(cur) = w.current
                                && grants[cur].token == token
                            {
                                w.depth += 1;
                                continue;
                            }
                            // Depth 0: a new grant. Depth > 0 with another token: the old
                            // owner identity ended unseen (e.g. a library that silently opened
                            // a new session); no release of the old grant was applied, so its
                            // end stays `NotReleased`.
                            let g = grants.len();
                            grants.push(Grant {
                                mutex: mutex.clone(),
                                client: r.client,
                                token,
                                abandoned,
                                first: id,
                                lo: r.invoke,
                                hi,
                                end: HoldEnd::NotReleased,
                            });
                            seen.insert((mutex.clone(), token), g);
                            w.current = Some(g);
                            w.depth = 1;
                        } else if let Some(&g) = seen.get(&(mutex.clone(), token)) {
                            w.current = Some(g);
                        } else {
                            let g = grants.len();
                            grants.push(Grant {
                                mutex: mutex.clone(),
                                client: r.client,
                                token,
                                abandoned,
                                first: id,
                                lo: w
                                    .earliest_unknown_acquire
                                    .map_or(r.invoke, |e| e.min(r.invoke)),
                                hi,
                                end: HoldEnd::Ambiguous,
                            });
                            seen.insert((mutex.clone(), token), g);
                            w.current = Some(g);
                        }
                    }
                    (false, Outcome::Ok) if !w.tainted => match w.current {
                        Some(cur) if w.depth > 0 => {
                            w.depth -= 1;
                            if w.depth == 0 {
                                grants[cur].end = HoldEnd::Released(id);
                                w.current = None;
                            }
                        }
                        _ => {
                            self.violation(
                                ViolationKind::UnownedRelease,
                                &[id],
                                "a release was acknowledged although the client owned \
                                 nothing (every earlier acquire and release had a definite \
                                 outcome)"
                                    .into(),
                            );
                        }
                    },
                    // Timeouts and failures changed nothing; releases of an uncertain pair
                    // tell nothing.
                    _ => {}
                }
            }
        }
        grants
    }

    /// Grant indices per mutex.
    pub(super) fn per_mutex(grants: &[Grant]) -> BTreeMap<&str, Vec<usize>> {
        let mut map: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, g) in grants.iter().enumerate() {
            map.entry(g.mutex.as_str()).or_default().push(i);
        }
        map
    }

    /// Valid pins: `keep_open` creates that succeeded, by clients that never lost their session
    /// nor closed a handle to that name.
    pub(super) fn pins(&self) -> Pins {
        let lost: HashSet<ClientId> = self
            .h
            .records
            .iter()
            .filter(|r| r.op == Op::LostSession)
            .map(|r| r.client)
            .collect();
        let closed: HashSet<(ClientId, &str)> = self
            .h
            .records
            .iter()
            .filter_map(|r| match &r.op {
                Op::Close { name } if !matches!(r.outcome(), Outcome::Failed(_)) => {
                    Some((r.client, name.as_str()))
                }
                _ => None,
            })
            .collect();
        let mut exists: HashMap<String, Pin> = HashMap::new();
        let mut manual: HashMap<String, Pin> = HashMap::new();
        for r in &self.h.records {
            let Op::Create {
                name,
                kind,
                keep_open: true,
            } = &r.op
            else {
                continue;
            };
            let Outcome::Created { already_existed } = r.outcome() else {
                continue;
            };
            if lost.contains(&r.client) || closed.contains(&(r.client, name.as_str())) {
                continue;
            }
            let pin = Pin {
                op: r.id,
                from: r.hi(),
            };
            let better = |old: Option<&Pin>| old.is_none_or(|p| p.from > pin.from);
            if better(exists.get(name)) {
                exists.insert(name.clone(), pin);
            }
            if *kind == ObjectKind::ManualResetEvent && !already_existed && better(manual.get(name))
            {
                manual.insert(name.clone(), pin);
            }
        }
        Pins { exists, manual }
    }

    /// Invocations of acquires with unknown outcomes, per mutex, sorted.
    pub(super) fn unknown_acquires(&self) -> HashMap<&'h str, Vec<Nanos>> {
        let h: &'h History = self.h;
        let mut map: HashMap<&'h str, Vec<Nanos>> = HashMap::new();
        for r in &h.records {
            if let Op::Acquire { mutex, .. } = &r.op
                && r.outcome() == Outcome::Unknown
            {
                map.entry(mutex.as_str()).or_default().push(r.invoke);
            }
        }
        for v in map.values_mut() {
            v.sort_unstable();
        }
        map
    }
}
