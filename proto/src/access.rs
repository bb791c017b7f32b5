//! The Win32 access-mask arithmetic (win32-semantics.md §1.3, §2.1), shared by the cluster's
//! namespace and the client's host-local backend so both grant exactly the same rights.

/// `READ_CONTROL`.
const READ_CONTROL: u32 = 0x0002_0000;
/// `SYNCHRONIZE`.
const SYNCHRONIZE: u32 = 0x0010_0000;
/// `ACCESS_SYSTEM_SECURITY`: always refused.
const ACCESS_SYSTEM_SECURITY: u32 = 0x0100_0000;
/// `MAXIMUM_ALLOWED`: grants the type's `…_ALL_ACCESS` (there are no security descriptors).
const MAXIMUM_ALLOWED: u32 = 0x0200_0000;
/// `GENERIC_ALL`.
const GENERIC_ALL: u32 = 0x1000_0000;
/// `GENERIC_EXECUTE`.
const GENERIC_EXECUTE: u32 = 0x2000_0000;
/// `GENERIC_WRITE`.
const GENERIC_WRITE: u32 = 0x4000_0000;
/// `GENERIC_READ`.
const GENERIC_READ: u32 = 0x8000_0000;
/// `ERROR_ACCESS_DENIED`.
const ERROR_ACCESS_DENIED: u32 = 5;
/// `ERROR_PRIVILEGE_NOT_HELD`.
const ERROR_PRIVILEGE_NOT_HELD: u32 = 1314;

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
    all: 0x001F_0001,
    read: READ_CONTROL | 0x0001,
    write: READ_CONTROL,
};

/// Event rights: `EVENT_ALL_ACCESS`; read adds `EVENT_QUERY_STATE`, write `EVENT_MODIFY_STATE`.
pub const EVENT: Rights = Rights {
    all: 0x001F_0003,
    read: READ_CONTROL | 0x0001,
    write: READ_CONTROL | 0x0002,
};

/// Semaphore rights: `SEMAPHORE_ALL_ACCESS`; read adds `SEMAPHORE_QUERY_STATE`, write
/// `SEMAPHORE_MODIFY_STATE`.
pub const SEMAPHORE: Rights = Rights {
    all: 0x001F_0003,
    read: READ_CONTROL | 0x0001,
    write: READ_CONTROL | 0x0002,
};

/// Replaces the four generic rights in `access` by the type's specific rights. Every other bit
/// is kept as it is.
///
/// ```
/// use dlock_proto::access::{map_generic, EVENT};
/// assert_eq!(map_generic(&EVENT, 0x4000_0000), 0x0002_0002); // GENERIC_WRITE
/// ```
pub fn map_generic(rights: &Rights, access: u32) -> u32 {
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
/// name): the request is mapped, `MAXIMUM_ALLOWED` grants the type's `…_ALL_ACCESS`, and the
/// result must be non-empty and within `…_ALL_ACCESS`.
///
/// # Errors
///
/// 1314 (`ERROR_PRIVILEGE_NOT_HELD`) for `ACCESS_SYSTEM_SECURITY`; 5 (`ERROR_ACCESS_DENIED`)
/// for an empty request or one with bits the type does not define.
pub fn existing_object(rights: &Rights, access: u32) -> Result<u32, u32> {
    if access & ACCESS_SYSTEM_SECURITY != 0 {
        return Err(ERROR_PRIVILEGE_NOT_HELD);
    }
    let mapped = map_generic(rights, access & !MAXIMUM_ALLOWED);
    if mapped & !rights.all != 0 {
        return Err(ERROR_ACCESS_DENIED);
    }
    let granted = if access & MAXIMUM_ALLOWED != 0 {
        mapped | rights.all
    } else {
        mapped
    };
    if granted == 0 {
        return Err(ERROR_ACCESS_DENIED);
    }
    Ok(granted)
}

/// The access the creator's handle to a *new* object receives: Windows grants the requested
/// access to the creator without a check, so the mapped request is granted as it is (even 0,
/// which yields a handle that can do nothing but be closed).
///
/// # Errors
///
/// 1314 (`ERROR_PRIVILEGE_NOT_HELD`) for `ACCESS_SYSTEM_SECURITY`.
pub fn new_object(rights: &Rights, access: u32) -> Result<u32, u32> {
    if access & ACCESS_SYSTEM_SECURITY != 0 {
        return Err(ERROR_PRIVILEGE_NOT_HELD);
    }
    let mapped = map_generic(rights, access & !MAXIMUM_ALLOWED);
    Ok(if access & MAXIMUM_ALLOWED != 0 {
        mapped | rights.all
    } else {
        mapped
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_rights_map_per_type() {
        assert_eq!(map_generic(&MUTEX, GENERIC_WRITE), READ_CONTROL);
        assert_eq!(map_generic(&MUTEX, GENERIC_ALL), MUTEX.all);
        assert_eq!(
            map_generic(&SEMAPHORE, GENERIC_EXECUTE),
            READ_CONTROL | SYNCHRONIZE
        );
        assert_eq!(existing_object(&EVENT, 0), Err(ERROR_ACCESS_DENIED));
        assert_eq!(existing_object(&EVENT, MAXIMUM_ALLOWED), Ok(EVENT.all));
        assert_eq!(existing_object(&MUTEX, 0x0002), Err(ERROR_ACCESS_DENIED));
        assert_eq!(new_object(&MUTEX, 0), Ok(0));
        assert_eq!(
            new_object(&MUTEX, ACCESS_SYSTEM_SECURITY),
            Err(ERROR_PRIVILEGE_NOT_HELD)
        );
    }
}
