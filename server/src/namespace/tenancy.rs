//! Quotas per principal (docs/security.md, "Quotas"): which principal each session of a
//! `Command::OpenSessionAs` belongs to, which principal created each object, and what every
//! principal holds, so that one principal at its quota gets 1450 while the others go on.
//!
//! Sessions opened with a plain `OpenSession` belong to no principal and count against the
//! cluster-wide limits only. Principals are interned (a number per principal, the name once),
//! so an object costs four bytes of attribution however long its creator's name; a principal
//! is forgotten when it holds nothing. The attribution travels in snapshots after the rest
//! (format 6); the usage counts are derived, kept up to date by the namespace's verbs and
//! recounted by `restore` and `verify`.

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use super::Namespace;
use super::object::ObjectId;
use super::types::{Quota, SessionId};

/// The principal and quota of a session opened with `OpenSessionAs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Tenancy {
    /// The principal's number (see `Namespace::principals`).
    pub(super) principal: PrincipalId,
    pub(super) quota: Quota,
}

/// A principal's number within the namespace.
pub(super) type PrincipalId = u32;

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

/// The part of a snapshot (format 6) after the namespace itself.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct TenancyImage {
    pub(super) principals: OrdMap<PrincipalId, String>,
    pub(super) last_principal_id: PrincipalId,
    pub(super) tenants: OrdMap<SessionId, Tenancy>,
    pub(super) object_tenants: OrdMap<ObjectId, PrincipalId>,
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

    /// Session `session` (just opened) belongs to `principal` under `quota`.
    pub(super) fn tenant_opened(&mut self, session: SessionId, principal: &str, quota: Quota) {
        let id = match self.principal_ids.get(principal) {
            Some(id) => *id,
            None => {
                self.last_principal_id = self
                    .last_principal_id
                    .checked_add(1)
                    .expect("2^32 principals");
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
            },
        );
        self.count_for(id, Held::Sessions, true);
    }

    /// Session `session` ended (after its handles and waits).
    pub(super) fn tenant_ended(&mut self, session: SessionId) {
        if let Some(tenancy) = self.tenants.remove(&session) {
            self.count_for(tenancy.principal, Held::Sessions, false);
        }
    }

    /// Object `object` was created by `session`: it counts against its principal's objects
    /// until it is destroyed.
    pub(super) fn tenant_object_created(&mut self, object: ObjectId, session: SessionId) {
        if let Some(tenancy) = self.tenants.get(&session) {
            let principal = tenancy.principal;
            self.object_tenants.insert(object, principal);
            self.count_for(principal, Held::Objects, true);
        }
    }

    /// Object `object` was destroyed.
    pub(super) fn tenant_object_destroyed(&mut self, object: ObjectId) {
        if let Some(principal) = self.object_tenants.remove(&object) {
            self.count_for(principal, Held::Objects, false);
        }
    }

    /// What every principal holds, counted from the state (for `restore` and `verify`).
    pub(super) fn count_usage(&self) -> OrdMap<PrincipalId, Usage> {
        let mut usage: OrdMap<PrincipalId, Usage> = OrdMap::new();
        for (id, tenancy) in &self.tenants {
            let entry = usage.entry(tenancy.principal).or_default();
            entry.sessions += 1;
            if let Some(session) = self.sessions.get(id) {
                entry.handles += session.handles.len() as u32;
                entry.waits += session.waits.len() as u32;
            }
        }
        for principal in self.object_tenants.values() {
            usage.entry(*principal).or_default().objects += 1;
        }
        usage
    }

    /// The attribution's own invariants: every attributed session and object exists, and the
    /// usage counts are what the state says.
    pub(super) fn verify_tenancy(&self) -> Result<(), String> {
        for id in self.tenants.keys() {
            if !self.sessions.contains_key(id) {
                return Err(format!("principal attributed to unknown session {id}"));
            }
        }
        for id in self.object_tenants.keys() {
            if !self.objects.contains_key(id) {
                return Err(format!("principal attributed to unknown object {id}"));
            }
        }
        if self.count_usage() != self.usage {
            return Err("per-principal usage counts out of step with the state".into());
        }
        // Exactly the principals that hold something are known, each under one number.
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
