//! The access-mask arithmetic (docs/win32-semantics.md §1.3, §2.1), shared by the cluster's
//! namespace and the `Local\` engine so both grant exactly the same rights.

use super::{
    ACCESS_SYSTEM_SECURITY, EVENT_ALL_ACCESS, EVENT_MODIFY_STATE, EVENT_QUERY_STATE, GENERIC_ALL,
    GENERIC_EXECUTE, GENERIC_READ, GENERIC_WRITE, MAXIMUM_ALLOWED, MUTANT_QUERY_STATE,
    MUTEX_ALL_ACCESS, ObjectKind, READ_CONTROL, SEMAPHORE_ALL_ACCESS, SEMAPHORE_MODIFY_STATE,
    SEMAPHORE_QUERY_STATE, SYNCHRONIZE, Win32Error,
};

/// What the generic rights mean for one object type (Wine's type descriptors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rights {
    /// The type's `…_ALL_ACCESS`: everything a handle to it can ever be granted.
    pub all: u32,
    /// What `GENERIC_READ` maps to.
    pub read: u32,
    /// What `GENERIC_WRITE` maps to.
    pub write: u32,
}

/// Mutex rights: `MUTEX_ALL_ACCESS`; read is `READ_CONTROL | MUTANT_QUERY_STATE`; write only
/// `READ_CONTROL`.
pub const MUTEX: Rights = Rights {
    all: MUTEX_ALL_ACCESS,
    read: READ_CONTROL | MUTANT_QUERY_STATE,
    write: READ_CONTROL,
};

/// Event rights: `EVENT_ALL_ACCESS`; read adds `EVENT_QUERY_STATE`, write `EVENT_MODIFY_STATE`.
pub const EVENT: Rights = Rights {
    all: EVENT_ALL_ACCESS,
    read: READ_CONTROL | EVENT_QUERY_STATE,
    write: READ_CONTROL | EVENT_MODIFY_STATE,
};

/// Semaphore rights: `SEMAPHORE_ALL_ACCESS`; read adds `SEMAPHORE_QUERY_STATE`, write
/// `SEMAPHORE_MODIFY_STATE`.
pub const SEMAPHORE: Rights = Rights {
    all: SEMAPHORE_ALL_ACCESS,
    read: READ_CONTROL | SEMAPHORE_QUERY_STATE,
    write: READ_CONTROL | SEMAPHORE_MODIFY_STATE,
};

/// The rights table of a type.
pub fn rights(kind: ObjectKind) -> &'static Rights {
    match kind {
        ObjectKind::Mutex => &MUTEX,
        ObjectKind::Event => &EVENT,
        ObjectKind::Semaphore => &SEMAPHORE,
    }
}

/// Replaces the four generic rights in `access` by the type's specific rights. Every other bit
/// is kept as it is.
///
/// ```
/// use dlock_proto::vocab::{access::map_generic, ObjectKind, GENERIC_WRITE};
/// assert_eq!(map_generic(ObjectKind::Event, GENERIC_WRITE), 0x0002_0002);
/// ```
pub fn map_generic(kind: ObjectKind, access: u32) -> u32 {
    let rights = rights(kind);
    let mut mapped = access & !(GENERIC_READ | GENERIC_WRITE | GENERIC_EXECUTE | GENERIC_ALL);
    if access & GENERIC_READ != 0 {
        mapped |= rights.read;
    }
    if access & GENERIC_WRITE != 0 {
        mapped |= rights.write;
    }
    if access & GENERIC_EXECUTE != 0 {
        mapped |= READ_CONTROL | SYNCHRONIZE;
    }
    if access & GENERIC_ALL != 0 {
        mapped |= rights.all;
    }
    mapped
}

/// The access a handle to an *existing* object receives (`Open*`, or a create that found the
/// name), after the access check of §2.1: the request is mapped, `MAXIMUM_ALLOWED` grants the
/// type's `…_ALL_ACCESS`, and the result must be non-empty and within `…_ALL_ACCESS`.
///
/// # Errors
///
/// [`Win32Error::PRIVILEGE_NOT_HELD`] for `ACCESS_SYSTEM_SECURITY`;
/// [`Win32Error::ACCESS_DENIED`] for an empty request or one with bits the type does not define.
pub fn existing_object(kind: ObjectKind, access: u32) -> Result<u32, Win32Error> {
    if access & ACCESS_SYSTEM_SECURITY != 0 {
        return Err(Win32Error::PRIVILEGE_NOT_HELD);
    }
    let all = rights(kind).all;
    let mapped = map_generic(kind, access & !MAXIMUM_ALLOWED);
    if mapped & !all != 0 {
        return Err(Win32Error::ACCESS_DENIED);
    }
    let granted = if access & MAXIMUM_ALLOWED != 0 {
        mapped | all
    } else {
        mapped
    };
    if granted == 0 {
        return Err(Win32Error::ACCESS_DENIED);
    }
    Ok(granted)
}

/// The access the creator's handle to a *new* object receives: Windows grants the requested
/// access to the creator without a check (§2.1 `CreateMutexEx`), so the mapped request is granted
/// as it is (even 0, which yields a handle that can do nothing but be closed).
///
/// # Errors
///
/// [`Win32Error::PRIVILEGE_NOT_HELD`] for `ACCESS_SYSTEM_SECURITY`.
pub fn new_object(kind: ObjectKind, access: u32) -> Result<u32, Win32Error> {
    if access & ACCESS_SYSTEM_SECURITY != 0 {
        return Err(Win32Error::PRIVILEGE_NOT_HELD);
    }
    let mapped = map_generic(kind, access & !MAXIMUM_ALLOWED);
    Ok(if access & MAXIMUM_ALLOWED != 0 {
        mapped | rights(kind).all
    } else {
        mapped
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ObjectKind::{Event, Mutex, Semaphore};

    #[test]
    fn generic_rights_map_per_type() {
        assert_eq!(map_generic(Mutex, GENERIC_WRITE), READ_CONTROL);
        assert_eq!(map_generic(Mutex, GENERIC_ALL), MUTEX.all);
        assert_eq!(
            map_generic(Semaphore, GENERIC_EXECUTE),
            READ_CONTROL | SYNCHRONIZE
        );
        assert_eq!(existing_object(Event, 0), Err(Win32Error::ACCESS_DENIED));
        assert_eq!(existing_object(Event, MAXIMUM_ALLOWED), Ok(EVENT.all));
        assert_eq!(
            existing_object(Mutex, 0x0002),
            Err(Win32Error::ACCESS_DENIED)
        );
        assert_eq!(new_object(Mutex, 0), Ok(0));
        assert_eq!(
            new_object(Mutex, ACCESS_SYSTEM_SECURITY),
            Err(Win32Error::PRIVILEGE_NOT_HELD)
        );
    }
}
