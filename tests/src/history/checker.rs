//! The checks: [`check`] replays a [`History`] into grants and pins (see the `model` module)
//! and tests each property of the module documentation against them, returning a [`Report`]
//! of how much was examined or every [`Violation`] found.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::model::{Grant, HoldEnd, Pins};
use super::{ClientId, ERROR_FILE_NOT_FOUND, History, Nanos, Op, OpId, Outcome};

/// Which property a [`Violation`] breaks (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// The history itself is ill-formed (a driver bug), so other conclusions may be unsound.
    Malformed,
    /// One request or wait got two different definite outcomes.
    ConflictingOutcomes,
    /// Two distinct grants of one mutex carry the same fencing token.
    DuplicateToken,
    /// A grant that took effect earlier in real time has a larger token.
    TokenOrder,
    /// A hold ended by an acknowledged release overlaps a later grant.
    OverlappingHolds,
    /// A release was acknowledged although the client owned nothing.
    UnownedRelease,
    /// The grant after a hold that ended without release did not report `WAIT_ABANDONED`.
    MissingAbandon,
    /// The grant after a cleanly released hold reported `WAIT_ABANDONED`.
    SpuriousAbandon,
    /// An acquire of a surely free mutex timed out after an acknowledged release.
    LostRelease,
    /// A wait on a surely signaled manual-reset event timed out after an acknowledged set.
    LostSet,
    /// A pinned object was reported missing or newly created.
    LostCreate,
}

/// One property the history breaks, with the records that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which property.
    pub kind: ViolationKind,
    /// The records involved, most relevant first.
    pub ops: Vec<OpId>,
    /// A readable explanation naming the records' operations, times and outcomes.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

/// Statistics of a history that passed, including how much each check could examine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Number of records.
    pub ops: usize,
    /// Records per [`Op::kind_name`].
    pub ops_per_kind: BTreeMap<&'static str, usize>,
    /// Records whose outcome is [`Outcome::Unknown`].
    pub unknown_outcomes: usize,
    /// Records whose outcome is [`Outcome::TimedOut`].
    pub timed_out: usize,
    /// Records whose outcome is [`Outcome::Failed`].
    pub failed: usize,
    /// Distinct grants reconstructed per mutex.
    pub grants_per_mutex: BTreeMap<String, usize>,
    /// Grants that reported `WAIT_ABANDONED`.
    pub abandoned_grants: usize,
    /// The largest fencing token seen (0 if none).
    pub max_token: u64,
    /// Holds ended by an acknowledged release that check 1(c) compared with later grants.
    pub released_holds_checked: usize,
    /// Consecutive grant pairs whose abandoned flag could be checked.
    pub abandon_pairs_checked: usize,
    /// Mutex waits that followed an acknowledged release with no possible grant in between, so
    /// had to acquire (check 2).
    pub release_waits_checked: usize,
    /// Event waits that followed an acknowledged set with no possible reset in between, so had
    /// to be signaled (check 2).
    pub event_waits_checked: usize,
    /// Opens and creates checked against an earlier pin.
    pub opens_checked: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops {:?}; {} unknown, {} timed out, {} failed; grants {:?} ({} abandoned), \
             max token {}; checked: {} released holds, {} abandon pairs, {} release waits, \
             {} event waits, {} opens",
            self.ops,
            self.ops_per_kind,
            self.unknown_outcomes,
            self.timed_out,
            self.failed,
            self.grants_per_mutex,
            self.abandoned_grants,
            self.max_token,
            self.released_holds_checked,
            self.abandon_pairs_checked,
            self.release_waits_checked,
            self.event_waits_checked,
            self.opens_checked,
        )
    }
}

/// The state of one [`check`] run: the history, and what was found so far.
pub(super) struct Checker<'h> {
    pub(super) h: &'h History,
    violations: Vec<Violation>,
    report: Report,
}

/// Checks `history` against the properties in the module documentation.
///
/// # Errors
///
/// Every violation found (each is impossible for a correct cluster and a driver that follows
/// the module's rules).
pub fn check(history: &History) -> Result<Report, Vec<Violation>> {
    let mut c = Checker {
        h: history,
        violations: Vec::new(),
        report: Report::default(),
    };
    c.stats();
    c.well_formed();
    c.resolved_once();
    let grants = c.grants();
    c.grant_stats(&grants);
    let pins = c.pins();
    c.tokens(&grants);
    c.holds(&grants);
    c.abandonment(&grants, &pins);
    c.lost_releases(&grants, &pins);
    c.lost_sets(&pins);
    c.lost_creates(&pins);
    if c.violations.is_empty() {
        Ok(c.report)
    } else {
        Err(c.violations)
    }
}

impl<'h> Checker<'h> {
    fn describe(&self, id: OpId) -> String {
        let r = self.h.get(id);
        let outcomes: Vec<String> = r
            .outcomes
            .iter()
            .map(|(t, o)| format!("{o:?}@{t}"))
            .collect();
        format!(
            "{id} {} {:?} invoked@{} -> [{}]",
            r.client,
            r.op,
            r.invoke,
            outcomes.join(", ")
        )
    }

    pub(super) fn violation(&mut self, kind: ViolationKind, ops: &[OpId], why: String) {
        let described: Vec<String> = ops.iter().map(|&id| self.describe(id)).collect();
        self.violations.push(Violation {
            kind,
            ops: ops.to_vec(),
            detail: format!("{why}; {}", described.join("; ")),
        });
    }

    fn stats(&mut self) {
        let r = &mut self.report;
        r.ops = self.h.records.len();
        for rec in &self.h.records {
            *r.ops_per_kind.entry(rec.op.kind_name()).or_default() += 1;
            match rec.outcome() {
                Outcome::Unknown => r.unknown_outcomes += 1,
                Outcome::TimedOut => r.timed_out += 1,
                Outcome::Failed(_) => r.failed += 1,
                Outcome::Acquired { token, .. } => r.max_token = r.max_token.max(token),
                _ => {}
            }
        }
    }

    /// Each client's records, in invocation order.
    pub(super) fn by_client(&self) -> BTreeMap<ClientId, Vec<OpId>> {
        let mut map: BTreeMap<ClientId, Vec<OpId>> = BTreeMap::new();
        for r in &self.h.records {
            map.entry(r.client).or_default().push(r.id);
        }
        for ids in map.values_mut() {
            ids.sort_by_key(|&id| (self.h.get(id).invoke, id));
        }
        map
    }

    fn well_formed(&mut self) {
        for (i, r) in self.h.records.iter().enumerate() {
            if r.id != OpId(i) {
                self.violation(
                    ViolationKind::Malformed,
                    &[OpId(i)],
                    format!("record {i} carries id {}", r.id),
                );
            }
            for (t, o) in &r.outcomes {
                if !r.op.fits(o) {
                    self.violation(
                        ViolationKind::Malformed,
                        &[OpId(i)],
                        format!("outcome {o:?} does not fit the operation"),
                    );
                }
                if *t < r.invoke {
                    self.violation(
                        ViolationKind::Malformed,
                        &[OpId(i)],
                        "an outcome was read before the invocation".into(),
                    );
                }
            }
        }
        for ids in self.by_client().values() {
            for pair in ids.windows(2) {
                let (a, b) = (self.h.get(pair[0]), self.h.get(pair[1]));
                if a.ended().is_none_or(|end| end > b.invoke) {
                    self.violation(
                        ViolationKind::Malformed,
                        &[a.id, b.id],
                        "one client had two operations in flight at once".into(),
                    );
                }
            }
        }
    }

    fn resolved_once(&mut self) {
        let mut groups: BTreeMap<(ClientId, u64), Vec<OpId>> = BTreeMap::new();
        for r in &self.h.records {
            let mut definite = r.outcomes.iter().filter(|(_, o)| o.is_definite());
            if let Some((_, first)) = definite.next()
                && let Some((_, other)) = definite.find(|(_, o)| o != first)
            {
                self.violation(
                    ViolationKind::ConflictingOutcomes,
                    &[r.id],
                    format!("one operation got two outcomes, {first:?} and {other:?}"),
                );
            }
            if let Some(request) = r.request {
                groups.entry((r.client, request)).or_default().push(r.id);
            }
        }
        for ((client, request), ids) in groups {
            let first = self.h.get(ids[0]);
            for &id in &ids[1..] {
                let r = self.h.get(id);
                if r.op != first.op {
                    self.violation(
                        ViolationKind::Malformed,
                        &[first.id, id],
                        format!("request {client}/{request} was used for different operations"),
                    );
                    continue;
                }
                let (a, b) = (first.outcome(), r.outcome());
                if a.is_definite() && b.is_definite() && a != b {
                    self.violation(
                        ViolationKind::ConflictingOutcomes,
                        &[first.id, id],
                        format!("request {client}/{request} was resolved twice: {a:?} and {b:?}"),
                    );
                }
            }
        }
    }

    fn grant_stats(&mut self, grants: &[Grant]) {
        for g in grants {
            *self
                .report
                .grants_per_mutex
                .entry(g.mutex.clone())
                .or_default() += 1;
            if g.abandoned {
                self.report.abandoned_grants += 1;
            }
        }
    }

    /// 1(a) unique tokens and 1(b) tokens increase in real-time order.
    fn tokens(&mut self, grants: &[Grant]) {
        for (mutex, idx) in Self::per_mutex(grants) {
            let mut by_token: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for &i in &idx {
                by_token.entry(grants[i].token).or_default().push(i);
            }
            for (token, gs) in &by_token {
                if gs.len() > 1 {
                    let ops: Vec<OpId> = gs.iter().map(|&i| grants[i].first).collect();
                    let clients: Vec<String> =
                        gs.iter().map(|&i| grants[i].client.to_string()).collect();
                    self.violation(
                        ViolationKind::DuplicateToken,
                        &ops,
                        format!(
                            "{} distinct grants of {mutex:?} (clients {}) share token {token}",
                            gs.len(),
                            clients.join(", ")
                        ),
                    );
                }
            }
            // For each Y: the largest token among grants X with X.hi < Y.lo.
            let mut by_hi = idx.clone();
            by_hi.sort_by_key(|&i| grants[i].hi);
            let mut prefix_max: Vec<usize> = Vec::with_capacity(by_hi.len());
            for (k, &i) in by_hi.iter().enumerate() {
                let best = match k {
                    0 => i,
                    _ => {
                        let prev = prefix_max[k - 1];
                        if grants[prev].token >= grants[i].token {
                            prev
                        } else {
                            i
                        }
                    }
                };
                prefix_max.push(best);
            }
            for &y in &idx {
                let n = by_hi.partition_point(|&i| grants[i].hi < grants[y].lo);
                if n == 0 {
                    continue;
                }
                let x = prefix_max[n - 1];
                if grants[x].token > grants[y].token {
                    self.violation(
                        ViolationKind::TokenOrder,
                        &[grants[x].first, grants[y].first],
                        format!(
                            "grant with token {} took effect before grant with token {} of \
                             {mutex:?} was invoked, so its token must be smaller",
                            grants[x].token, grants[y].token
                        ),
                    );
                }
            }
        }
    }

    /// 1(c): a hold ended by an acknowledged release R ends before any grant with a larger
    /// token takes effect, so R was invoked no later than that grant's acquire completed.
    fn holds(&mut self, grants: &[Grant]) {
        for (mutex, mut idx) in Self::per_mutex(grants) {
            idx.sort_by_key(|&i| grants[i].token);
            // suffix_min[k]: the grant with the smallest `hi` among idx[k..].
            let mut suffix_min = idx.clone();
            for k in (0..idx.len().saturating_sub(1)).rev() {
                if grants[suffix_min[k + 1]].hi < grants[idx[k]].hi {
                    suffix_min[k] = suffix_min[k + 1];
                }
            }
            for &a in &idx {
                let HoldEnd::Released(release) = grants[a].end else {
                    continue;
                };
                self.report.released_holds_checked += 1;
                let k = idx.partition_point(|&i| grants[i].token <= grants[a].token);
                if k == idx.len() {
                    continue;
                }
                let b = suffix_min[k];
                let release_invoke = self.h.get(release).invoke;
                if release_invoke > grants[b].hi {
                    self.violation(
                        ViolationKind::OverlappingHolds,
                        &[grants[a].first, release, grants[b].first],
                        format!(
                            "{mutex:?}: the grant with token {} completed before the release \
                             of the grant with token {} was invoked; both clients held it",
                            grants[b].token, grants[a].token
                        ),
                    );
                }
            }
        }
    }

    /// Abandoned flags of consecutive grants of pinned mutexes.
    fn abandonment(&mut self, grants: &[Grant], pins: &Pins) {
        let unknown = self.unknown_acquires();
        for (mutex, mut idx) in Self::per_mutex(grants) {
            let Some(pin) = pins.exists.get(mutex) else {
                continue;
            };
            let earliest_unknown = unknown
                .get(mutex)
                .and_then(|v| v.first().copied())
                .unwrap_or(Nanos::MAX);
            idx.sort_by_key(|&i| grants[i].token);
            for pair in idx.windows(2) {
                let (a, b) = (&grants[pair[0]], &grants[pair[1]]);
                if a.token == b.token || pin.from >= a.lo || earliest_unknown <= b.hi {
                    continue;
                }
                match a.end {
                    HoldEnd::Ambiguous => {}
                    HoldEnd::Released(release) => {
                        self.report.abandon_pairs_checked += 1;
                        if b.abandoned {
                            self.violation(
                                ViolationKind::SpuriousAbandon,
                                &[b.first, a.first, release],
                                format!(
                                    "{mutex:?}: the grant with token {} reported WAIT_ABANDONED \
                                     although the previous grant (token {}) was released",
                                    b.token, a.token
                                ),
                            );
                        }
                    }
                    HoldEnd::NotReleased => {
                        self.report.abandon_pairs_checked += 1;
                        if !b.abandoned {
                            self.violation(
                                ViolationKind::MissingAbandon,
                                &[b.first, a.first],
                                format!(
                                    "{mutex:?}: the grant with token {} did not report \
                                     WAIT_ABANDONED although the previous grant (token {}) was \
                                     never released, so its owner ended",
                                    b.token, a.token
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    /// 2: an acquire of a mutex that was surely free (released, nobody else granted) must not
    /// time out.
    fn lost_releases(&mut self, grants: &[Grant], pins: &Pins) {
        let unknown = self.unknown_acquires();
        let per_mutex = Self::per_mutex(grants);
        for w in &self.h.records {
            let Op::Acquire { mutex, .. } = &w.op else {
                continue;
            };
            let timed_out = match w.outcome() {
                Outcome::TimedOut => true,
                Outcome::Acquired { .. } => false,
                _ => continue,
            };
            let (Some(pin), Some(idx)) = (pins.exists.get(mutex), per_mutex.get(mutex.as_str()))
            else {
                continue;
            };
            let w_ret = w.hi();
            if unknown
                .get(mutex.as_str())
                .and_then(|v| v.first())
                .is_some_and(|&u| u <= w_ret)
            {
                continue;
            }
            // The acknowledged final release with the latest invocation that completed before W
            // was invoked (the later the release, the fewer grants can interfere).
            let candidate = idx
                .iter()
                .filter_map(|&a| match grants[a].end {
                    HoldEnd::Released(r) if pin.from < grants[a].lo => Some((a, r)),
                    _ => None,
                })
                .filter(|&(_, r)| self.h.get(r).hi() < w.invoke)
                .max_by_key(|&(_, r)| self.h.get(r).invoke);
            let Some((a, release)) = candidate else {
                continue;
            };
            let r_invoke = self.h.get(release).invoke;
            // Any other grant that may have taken effect between the release and W's decision
            // (W's own grant, if it got one, does not count).
            let interfering = idx.iter().any(|&x| {
                x != a
                    && grants[x].first != w.id
                    && grants[x].lo <= w_ret
                    && grants[x].hi >= r_invoke
            });
            if interfering {
                continue;
            }
            self.report.release_waits_checked += 1;
            if timed_out {
                self.violation(
                    ViolationKind::LostRelease,
                    &[w.id, release, grants[a].first],
                    format!(
                        "{mutex:?} was released (token {}) before this acquire was invoked and \
                         nobody can have been granted it since, yet the acquire timed out",
                        grants[a].token
                    ),
                );
            }
        }
    }

    /// 2: a wait on a manual-reset event that was surely signaled must not time out.
    fn lost_sets(&mut self, pins: &Pins) {
        // Per event: acknowledged sets (invoke, returned, id) after the pin, and resets or
        // pulses that may have had an effect (invoke, returned or never).
        let h: &'h History = self.h;
        let mut sets: HashMap<&str, Vec<(Nanos, Nanos, OpId)>> = HashMap::new();
        let mut clears: HashMap<&str, Vec<(Nanos, Nanos)>> = HashMap::new();
        for r in &h.records {
            match (&r.op, r.outcome()) {
                (Op::SetEvent { event }, Outcome::Ok)
                    if pins.manual.get(event).is_some_and(|p| p.from < r.invoke) =>
                {
                    sets.entry(event)
                        .or_default()
                        .push((r.invoke, r.hi(), r.id));
                }
                (Op::ResetEvent { event } | Op::PulseEvent { event }, o)
                    if !matches!(o, Outcome::Failed(_)) =>
                {
                    clears.entry(event).or_default().push((r.invoke, r.hi()));
                }
                _ => {}
            }
        }
        for w in &self.h.records {
            let Op::WaitEvent { event, .. } = &w.op else {
                continue;
            };
            let timed_out = match w.outcome() {
                Outcome::TimedOut => true,
                Outcome::Signaled => false,
                _ => continue,
            };
            // The acknowledged set with the latest invocation that completed before W.
            let Some(&(s_invoke, _, set)) = sets
                .get(event.as_str())
                .and_then(|v| v.iter().filter(|s| s.1 < w.invoke).max_by_key(|s| s.0))
            else {
                continue;
            };
            let w_ret = w.hi();
            let interfering = clears
                .get(event.as_str())
                .is_some_and(|v| v.iter().any(|&(inv, hi)| inv <= w_ret && hi >= s_invoke));
            if interfering {
                continue;
            }
            self.report.event_waits_checked += 1;
            if timed_out {
                self.violation(
                    ViolationKind::LostSet,
                    &[w.id, set],
                    format!(
                        "manual-reset event {event:?} was set before this wait was invoked and \
                         nothing can have reset it since, yet the wait timed out"
                    ),
                );
            }
        }
    }

    /// 2: an object pinned before an open or create was invoked still exists then.
    fn lost_creates(&mut self, pins: &Pins) {
        for r in &self.h.records {
            let (name, lost) = match (&r.op, r.outcome()) {
                (Op::Open { name }, o) => (name, o == Outcome::Failed(ERROR_FILE_NOT_FOUND)),
                (Op::Create { name, .. }, o) => (
                    name,
                    o == Outcome::Created {
                        already_existed: false,
                    },
                ),
                _ => continue,
            };
            let Some(pin) = pins.exists.get(name) else {
                continue;
            };
            if pin.op == r.id || pin.from >= r.invoke || !r.outcome().is_definite() {
                continue;
            }
            self.report.opens_checked += 1;
            if lost {
                self.violation(
                    ViolationKind::LostCreate,
                    &[r.id, pin.op],
                    format!(
                        "{name:?} was created and kept open before this operation was \
                         invoked, yet the cluster reported it missing"
                    ),
                );
            }
        }
    }
}
