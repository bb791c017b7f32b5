//! Object names (win32-semantics.md §3): from the name a caller passed to the key under which the
//! object lives in the one, case-sensitive namespace.
//!
//! dlock recognises exactly two prefixes. `Global\X` and `X` are the same cluster-wide object, so
//! `Global\` is stripped. `Local\X` belongs to the host-local backend and never reaches the
//! cluster; if it does, it is refused with 87. Every other backslash is a path separator on
//! Windows and yields the path errors Windows gives.

use super::win32::{
    ERROR_BAD_PATHNAME, ERROR_FILENAME_EXCED_RANGE, ERROR_INVALID_HANDLE, ERROR_INVALID_NAME,
    ERROR_INVALID_PARAMETER, ERROR_PATH_NOT_FOUND, MAX_PATH,
};

/// The prefix that names the cluster-wide namespace explicitly; stripped (`Global\X` is `X`).
pub const GLOBAL_PREFIX: &str = "Global\\";
/// The prefix that names the host-local namespace; the client routes it to the local backend,
/// and the cluster refuses it with `ERROR_INVALID_PARAMETER`.
pub const LOCAL_PREFIX: &str = "Local\\";

/// The namespace key of a non-empty name, checked in this order:
///
/// 1. more than [`MAX_PATH`] UTF-16 code units (prefix included) → 206;
/// 2. an interior NUL → 123 (a C caller could not pass one; refusing beats truncating);
/// 3. a leading backslash → 161;
/// 4. the `Local\` prefix → 87 (not the cluster's business);
/// 5. `Global\` is stripped; nothing left (`Global\` alone) → 123;
/// 6. an empty first component after it (`Global\\X`) → 123;
/// 7. any other backslash (`a\b`, `X\`, `global\X`, `Global\Global\X`) → 3.
///
/// # Errors
///
/// The Win32 error code above.
pub fn name_key(name: &str) -> Result<&str, u32> {
    if name.encode_utf16().count() > MAX_PATH {
        return Err(ERROR_FILENAME_EXCED_RANGE);
    }
    if name.contains('\0') {
        return Err(ERROR_INVALID_NAME);
    }
    if name.starts_with('\\') {
        return Err(ERROR_BAD_PATHNAME);
    }
    if name.starts_with(LOCAL_PREFIX) {
        return Err(ERROR_INVALID_PARAMETER);
    }
    let rest = name.strip_prefix(GLOBAL_PREFIX).unwrap_or(name);
    if rest.is_empty() || rest.starts_with('\\') {
        return Err(ERROR_INVALID_NAME);
    }
    if rest.contains('\\') {
        return Err(ERROR_PATH_NOT_FOUND);
    }
    Ok(rest)
}

/// The key for a create: `None` or `""` make an unnamed object (`Ok(None)`, never shared, §3.3).
///
/// # Errors
///
/// As [`name_key`].
pub fn create_name_key(name: Option<&str>) -> Result<Option<&str>, u32> {
    match name {
        None | Some("") => Ok(None),
        Some(name) => name_key(name).map(Some),
    }
}

/// The key for an open.
///
/// # Errors
///
/// `None` → 87 (`lpName == NULL`); `""` → 6 (it names the directory, not an object, §3.3);
/// otherwise as [`name_key`].
pub fn open_name_key(name: Option<&str>) -> Result<&str, u32> {
    match name {
        None => Err(ERROR_INVALID_PARAMETER),
        Some("") => Err(ERROR_INVALID_HANDLE),
        Some(name) => name_key(name),
    }
}
