//! Quotas per principal (docs/security.md, "Quotas"): which principal each session of a
//! `Command::OpenSessionAs` belongs to, which of those sessions created each object, and what
//! every principal holds, so that one principal at its quota gets 1450 while the others go on.
//!
//! Sessions opened with a plain `OpenSession` belong to no principal and count against the
//! cluster-wide limits only. An object counts against the principal of the session that
//! created it for as long as both live: when that session ends, the objects it created (and
//! that others still hold) stop counting. So a principal is kept by its sessions alone, at
//! most one per session, and is forgotten when it has none. Principals are interned (a number
//! per principal, the name once). The attribution travels in snapshots after the rest (format
//! 6); the usage counts are derived, kept up to date by the namespace's verbs and recounted by
//! `restore` and `verify`.

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use super::Namespace;
use super::object::ObjectId;
use super::types::{Quota, SessionId};

/// A principal's number within the namespace.
pub(super) type PrincipalId = u64;

/// The principal and quota of a session opened with `OpenSessionAs`, and the objects it
/// created that still exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Tenancy {
    /// The principal's number (see `Namespace::principals`).
    pub(super) principal: PrincipalId,
    pub(super) quota: Quota,
    #[serde(deserialize_with = "cautious_set")]
    pub(super) objects: OrdSet<ObjectId>,
}

/// What one principal holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) sessions: u32,
    pub(super) objects: u32,
    pub(super) handles: u32,
    pub(super) waits: u32,
}

impl Usage {
    fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

/// One kind of thing a quota bounds.
#[derive(Debug, Clone, Copy)]
pub(super) enum Held {
    Sessions,
    Objects,
    Handles,
    Waits,
}

impl Held {
    fn of(self, usage: &mut Usage) -> &mut u32 {
        match self {
            Held::Sessions => &mut usage.sessions,
            Held::Objects => &mut usage.objects,
            Held::Handles => &mut usage.handles,
            Held::Waits => &mut usage.waits,
        }
    }

    fn limit(self, quota: &Quota) -> u32 {
        match self {
            Held::Sessions => quota.sessions,
            Held::Objects => quota.objects,
            Held::Handles => quota.handles,
            Held::Waits => quota.waits,
        }
    }
}

/// The part of a snapshot (format 6) after the namespace itself. Read with the same care as
/// the rest: a claimed length never sizes an allocation.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct TenancyImage {
    #[serde(deserialize_with = "super::cautious_map")]
    pub(super) principals: OrdMap<PrincipalId, String>,
    pub(super) last_principal_id: PrincipalId,
    #[serde(deserialize_with = "super::cautious_map")]
    pub(super) tenants: OrdMap<SessionId, Tenancy>,
}

/// Like `cautious_map`, for a set.
fn cautious_set<'de, D>(deserializer: D) -> Result<OrdSet<ObjectId>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = OrdSet<ObjectId>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a sequence of object ids")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = OrdSet::new();
            while let Some(id) = seq.next_element()? {
                entries.insert(id);
            }
            Ok(entries)
        }
    }
    deserializer.deserialize_seq(Entries)
}

impl Namespace {
    /// Whether session `session` may hold one more of `what` under its principal's quota
    /// (always, for a session of no principal).
    pub(super) fn tenant_has_room(&self, session: SessionId, what: Held) -> bool {
        let Some(tenancy) = self.tenants.get(&session) else {
            return true;
        };
        let mut usage = self
            .usage
            .get(&tenancy.principal)
            .copied()
            .unwrap_or_default();
        *what.of(&mut usage) < what.limit(&tenancy.quota)
    }

    /// Counts one more (`up`) or one less of `what` for `session`'s principal, if it has one.
    pub(super) fn tenant_count(&mut self, session: SessionId, what: Held, up: bool) {
        let Some(tenancy) = self.tenants.get(&session) else {
            return;
        };
        let principal = tenancy.principal;
        self.count_for(principal, what, up);
    }

    /// Counts one more or one less for `principal`; a principal that holds nothing any more
    /// is forgotten (its number is not reused).
    fn count_for(&mut self, principal: PrincipalId, what: Held, up: bool) {
        let usage = self.usage.entry(principal).or_default();
        let count = what.of(usage);
        if up {
            *count += 1;
        } else {
            *count = count
                .checked_sub(1)
                .expect("a principal's usage count went below zero");
        }
        if usage.is_zero() {
            self.usage.remove(&principal);
            if let Some(name) = self.principals.remove(&principal) {
                self.principal_ids.remove(&name);
            }
        }
    }

    /// What `principal` holds now (nothing if the namespace does not know it).
    pub(super) fn usage_of(&self, principal: &str) -> Usage {
        self.principal_ids
            .get(principal)
            .and_then(|id| self.usage.get(id))
            .copied()
            .unwrap_or_default()
    }

    /// How many sessions `principal` has open (for the gRPC layer's reading of a refusal).
    pub fn principal_sessions(&self, principal: &str) -> u32 {
        self.usage_of(principal).sessions
    }

    /// Whether a new principal can still be given a number (2^64 of them: never exhausted in
    /// practice, but a refusal rather than a panic if a forged snapshot says otherwise).
    pub(super) fn can_number(&self, principal: &str) -> bool {
        self.principal_ids.contains_key(principal) || self.last_principal_id < PrincipalId::MAX
    }

    /// Session `session` (just opened) belongs to `principal` under `quota` (the caller checked
    /// [`Namespace::can_number`]).
    pub(super) fn tenant_opened(&mut self, session: SessionId, principal: &str, quota: Quota) {
        let id = match self.principal_ids.get(principal) {
            Some(id) => *id,
            None => {
                self.last_principal_id += 1;
                let id = self.last_principal_id;
                self.principals.insert(id, principal.to_owned());
                self.principal_ids.insert(principal.to_owned(), id);
                id
            }
        };
        self.tenants.insert(
            session,
            Tenancy {
                principal: id,
                quota,
                objects: OrdSet::new(),
            },
        );
        self.count_for(id, Held::Sessions, true);
    }

    /// Session `session` ended (after its handles and waits): the objects it created stop
    /// counting, and so does the session.
    pub(super) fn tenant_ended(&mut self, session: SessionId) {
        if let Some(tenancy) = self.tenants.remove(&session) {
            for object in &tenancy.objects {
                self.object_tenants.remove(object);
                self.count_for(tenancy.principal, Held::Objects, false);
            }
            self.count_for(tenancy.principal, Held::Sessions, false);
        }
    }

    /// Object `object` was created by `session`: it counts against its principal until it is
    /// destroyed or the session ends.
    pub(super) fn tenant_object_created(&mut self, object: ObjectId, session: SessionId) {
        if let Some(tenancy) = self.tenants.get_mut(&session) {
            tenancy.objects.insert(object);
            let principal = tenancy.principal;
            self.object_tenants.insert(object, session);
            self.count_for(principal, Held::Objects, true);
        }
    }

    /// Object `object` was destroyed.
    pub(super) fn tenant_object_destroyed(&mut self, object: ObjectId) {
        if let Some(session) = self.object_tenants.remove(&object) {
            let tenancy = self
                .tenants
                .get_mut(&session)
                .expect("an attributed object's session is attributed");
            tenancy.objects.remove(&object);
            let principal = tenancy.principal;
            self.count_for(principal, Held::Objects, false);
        }
    }

    /// The object → creating session index, from the sessions' own lists (for `restore`).
    pub(super) fn object_tenant_index(&self) -> OrdMap<ObjectId, SessionId> {
        self.tenants
            .iter()
            .flat_map(|(session, tenancy)| tenancy.objects.iter().map(move |o| (*o, *session)))
            .collect()
    }

    /// What every principal holds, counted from the state (for `restore` and `verify`);
    /// `None` if a count does not fit (only a hostile image could say so).
    pub(super) fn count_usage(&self) -> Option<OrdMap<PrincipalId, Usage>> {
        let mut usage: OrdMap<PrincipalId, Usage> = OrdMap::new();
        for (id, tenancy) in &self.tenants {
            let entry = usage.entry(tenancy.principal).or_default();
            let session = self.sessions.get(id);
            let add = |count: &mut u32, n: usize| -> Option<()> {
                *count = count.checked_add(u32::try_from(n).ok()?)?;
                Some(())
            };
            add(&mut entry.sessions, 1)?;
            add(&mut entry.objects, tenancy.objects.len())?;
            add(&mut entry.handles, session.map_or(0, |s| s.handles.len()))?;
            add(&mut entry.waits, session.map_or(0, |s| s.waits.len()))?;
        }
        Some(usage)
    }

    /// The attribution's own invariants: every attributed session and object exists, each
    /// object is attributed once, the principal table holds exactly the principals of the
    /// attributed sessions, and the usage counts are what the state says.
    pub(super) fn verify_tenancy(&self) -> Result<(), String> {
        let mut objects = 0usize;
        for (id, tenancy) in &self.tenants {
            if !self.sessions.contains_key(id) {
                return Err(format!("principal attributed to unknown session {id}"));
            }
            if !self.principals.contains_key(&tenancy.principal) {
                return Err(format!(
                    "session {id} of unknown principal {}",
                    tenancy.principal
                ));
            }
            for object in &tenancy.objects {
                if !self.objects.contains_key(object) {
                    return Err(format!("principal attributed to unknown object {object}"));
                }
                if self.object_tenants.get(object) != Some(id) {
                    return Err(format!("object {object} attributed inconsistently"));
                }
            }
            objects += tenancy.objects.len();
        }
        if objects != self.object_tenants.len() {
            return Err("an object is attributed twice".into());
        }
        if self.count_usage().as_ref() != Some(&self.usage) {
            return Err("per-principal usage counts out of step with the state".into());
        }
        if self.principals.len() != self.usage.len()
            || self
                .usage
                .keys()
                .any(|id| !self.principals.contains_key(id))
            || self
                .principals
                .keys()
                .any(|id| *id > self.last_principal_id)
            || self.principal_ids.len() != self.principals.len()
            || self
                .principals
                .iter()
                .any(|(id, name)| self.principal_ids.get(name) != Some(id))
        {
            return Err("principal table out of step with the attribution".into());
        }
        Ok(())
    }
}
