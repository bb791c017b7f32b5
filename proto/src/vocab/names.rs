//! Object names (docs/win32-semantics.md §3): the checks a caller's name goes through, from the
//! `A`/`W` entry points of the facade to the key under which the object lives.
//!
//! dlock recognises exactly two prefixes. `Global\X` and `X` are the same cluster-wide object, so
//! `Global\` is stripped. `Local\X` belongs to the host's `Local\` engine and never reaches the
//! cluster; if it does, it is refused with 87. Every other backslash is a path separator on
//! Windows and yields the path errors Windows gives.
//!
//! Three stages, each where it must happen:
//!
//! 1. [`from_a`] / [`from_w`] (client, before any call): cut at the first NUL, the
//!    [`MAX_PATH`] limit, valid UTF-16;
//! 2. [`local_key`] (client): whether the name is routed to the `Local\` engine;
//! 3. [`name_key`] (cluster) or [`local_name_key`] (`Local\` engine): the key itself.

use super::{MAX_PATH, Win32Error};

/// The prefix that names the cluster-wide namespace explicitly; stripped (`Global\X` is `X`).
pub const GLOBAL_PREFIX: &str = "Global\\";
/// The prefix that names the host-local namespace (case-sensitive, like the Win32 keyword); the
/// client routes it to the `Local\` engine, and the cluster refuses it with
/// `ERROR_INVALID_PARAMETER`.
pub const LOCAL_PREFIX: &str = "Local\\";
/// The longest key (after `Local\`) the `Local\` engine stores, in UTF-8 bytes: three bytes for
/// each of [`MAX_PATH`] UTF-16 units, so no name that passed [`from_a`] is refused for length.
pub const LOCAL_NAME_BYTES_MAX: usize = 3 * MAX_PATH as usize;

/// A checked `A` name: `Ok(None)` for NULL. The name ends at the first NUL (a C caller's string
/// ends there).
///
/// # Errors
///
/// [`Win32Error::FILENAME_EXCED_RANGE`] for more than [`MAX_PATH`] UTF-16 units.
pub fn from_a(name: Option<&str>) -> Result<Option<String>, Win32Error> {
    let Some(name) = name else { return Ok(None) };
    let name = name.split('\0').next().unwrap_or_default();
    if name.encode_utf16().count() > MAX_PATH as usize {
        return Err(Win32Error::FILENAME_EXCED_RANGE);
    }
    Ok(Some(name.to_owned()))
}

/// A checked `W` name (UTF-16, no terminator needed): `Ok(None)` for NULL.
///
/// # Errors
///
/// [`Win32Error::FILENAME_EXCED_RANGE`] for more than [`MAX_PATH`] units (checked first);
/// [`Win32Error::INVALID_NAME`] for invalid UTF-16.
pub fn from_w(name: Option<&[u16]>) -> Result<Option<String>, Win32Error> {
    let Some(name) = name else { return Ok(None) };
    let end = name.iter().position(|&u| u == 0).unwrap_or(name.len());
    let name = &name[..end];
    if name.len() > MAX_PATH as usize {
        return Err(Win32Error::FILENAME_EXCED_RANGE);
    }
    String::from_utf16(name)
        .map(Some)
        .map_err(|_| Win32Error::INVALID_NAME)
}

/// The part after `Local\` of a host-local name (served by the `Local\` engine), else `None`.
pub fn local_key(name: &str) -> Option<&str> {
    name.strip_prefix(LOCAL_PREFIX)
}

/// The cluster namespace key of a non-empty name, checked in this order:
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
/// The Win32 error above.
pub fn name_key(name: &str) -> Result<&str, Win32Error> {
    if name.encode_utf16().count() > MAX_PATH as usize {
        return Err(Win32Error::FILENAME_EXCED_RANGE);
    }
    if name.contains('\0') {
        return Err(Win32Error::INVALID_NAME);
    }
    if name.starts_with('\\') {
        return Err(Win32Error::BAD_PATHNAME);
    }
    if name.starts_with(LOCAL_PREFIX) {
        return Err(Win32Error::INVALID_PARAMETER);
    }
    let rest = name.strip_prefix(GLOBAL_PREFIX).unwrap_or(name);
    if rest.is_empty() || rest.starts_with('\\') {
        return Err(Win32Error::INVALID_NAME);
    }
    if rest.contains('\\') {
        return Err(Win32Error::PATH_NOT_FOUND);
    }
    Ok(rest)
}

/// The key for a create: `None` or `""` make an unnamed object (`Ok(None)`, never shared, §3.3).
///
/// # Errors
///
/// As [`name_key`].
pub fn create_name_key(name: Option<&str>) -> Result<Option<&str>, Win32Error> {
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
pub fn open_name_key(name: Option<&str>) -> Result<&str, Win32Error> {
    match name {
        None => Err(Win32Error::INVALID_PARAMETER),
        Some("") => Err(Win32Error::INVALID_HANDLE),
        Some(name) => name_key(name),
    }
}

/// The key of a `Local\` name, given what follows the prefix. Empty, or an empty first component
/// (`Local\\x`) → 123; any other backslash → 3 (there are no directories below `Local\`); an
/// interior NUL or more than [`LOCAL_NAME_BYTES_MAX`] bytes → 123.
///
/// # Errors
///
/// The Win32 error above.
pub fn local_name_key(rest: &str) -> Result<&str, Win32Error> {
    if rest.is_empty() || rest.starts_with('\\') {
        return Err(Win32Error::INVALID_NAME);
    }
    if rest.contains('\\') {
        return Err(Win32Error::PATH_NOT_FOUND);
    }
    if rest.contains('\0') || rest.len() > LOCAL_NAME_BYTES_MAX {
        return Err(Win32Error::INVALID_NAME);
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    const RANGE: Win32Error = Win32Error::FILENAME_EXCED_RANGE;

    #[test]
    fn a_names_are_limited_to_260_utf16_units() {
        assert_eq!(from_a(None), Ok(None));
        assert_eq!(from_a(Some("")), Ok(Some(String::new())));
        assert_eq!(from_a(Some(&"x".repeat(260))), Ok(Some("x".repeat(260))));
        assert_eq!(from_a(Some(&"x".repeat(261))), Err(RANGE));
        // A character outside the BMP is two UTF-16 units.
        assert_eq!(from_a(Some(&"😀".repeat(131))), Err(RANGE));
        assert!(from_a(Some(&"😀".repeat(130))).is_ok());
    }

    #[test]
    fn w_names_are_limited_and_must_be_valid_utf16() {
        assert_eq!(from_w(None), Ok(None));
        assert_eq!(from_w(Some(&w("abc"))), Ok(Some("abc".into())));
        assert_eq!(from_w(Some(&w(&"y".repeat(261)))), Err(RANGE));
        assert_eq!(
            from_w(Some(&[0xD800, 0x41])),
            Err(Win32Error::INVALID_NAME),
            "lone surrogate"
        );
        // The length check comes first, even for invalid UTF-16.
        assert_eq!(from_w(Some(&[0xD800; 300])), Err(RANGE));
    }

    #[test]
    fn names_end_at_the_first_nul() {
        assert_eq!(from_a(Some("ab\0cd")), Ok(Some("ab".into())));
        let mut v = w("ab");
        v.push(0);
        v.extend(w(&"z".repeat(300)));
        assert_eq!(from_w(Some(&v)), Ok(Some("ab".into())));
    }

    #[test]
    fn local_names_are_recognised_case_sensitively() {
        assert_eq!(local_key("Local\\x"), Some("x"));
        assert_eq!(local_key("Local\\"), Some(""));
        assert_eq!(local_key("local\\x"), None);
        assert_eq!(local_key("Global\\x"), None);
        assert_eq!(local_key("x"), None);
    }
}
