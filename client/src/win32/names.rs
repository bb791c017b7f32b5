//! Client-side name checks for the `A` and `W` entry points.
//!
//! The server validates names fully (backslashes, `Global\`); the client only does what must
//! happen before or instead of a server call: cut at the first NUL (a C caller's string ends
//! there), enforce the 260-unit limit (206), reject invalid UTF-16 (123), and keep `Local\`
//! names away from the cluster.

use super::{ERROR_FILENAME_EXCED_RANGE, ERROR_INVALID_NAME, MAX_PATH};

/// The prefix of host-local names (case-sensitive, like the Win32 keyword).
pub(crate) const LOCAL_PREFIX: &str = "Local\\";

/// A checked `A` name: `Ok(None)` for NULL.
pub(crate) fn from_a(name: Option<&str>) -> Result<Option<String>, u32> {
    let Some(name) = name else { return Ok(None) };
    let name = name.split('\0').next().unwrap_or_default();
    if name.encode_utf16().count() > MAX_PATH as usize {
        return Err(ERROR_FILENAME_EXCED_RANGE);
    }
    Ok(Some(name.to_owned()))
}

/// A checked `W` name (UTF-16, no terminator needed): `Ok(None)` for NULL.
pub(crate) fn from_w(name: Option<&[u16]>) -> Result<Option<String>, u32> {
    let Some(name) = name else { return Ok(None) };
    let end = name.iter().position(|&u| u == 0).unwrap_or(name.len());
    let name = &name[..end];
    if name.len() > MAX_PATH as usize {
        return Err(ERROR_FILENAME_EXCED_RANGE);
    }
    String::from_utf16(name)
        .map(Some)
        .map_err(|_| ERROR_INVALID_NAME)
}

/// The part after `Local\\` of a host-local name (served by the local backend), else `None`.
pub(crate) fn local_key(name: &str) -> Option<&str> {
    name.strip_prefix(LOCAL_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn a_names_are_limited_to_260_utf16_units() {
        assert_eq!(from_a(None), Ok(None));
        assert_eq!(from_a(Some("")), Ok(Some(String::new())));
        assert_eq!(from_a(Some(&"x".repeat(260))), Ok(Some("x".repeat(260))));
        assert_eq!(from_a(Some(&"x".repeat(261))), Err(206));
        // A character outside the BMP is two UTF-16 units.
        assert_eq!(from_a(Some(&"😀".repeat(131))), Err(206));
        assert!(from_a(Some(&"😀".repeat(130))).is_ok());
    }

    #[test]
    fn w_names_are_limited_and_must_be_valid_utf16() {
        assert_eq!(from_w(None), Ok(None));
        assert_eq!(from_w(Some(&w("abc"))), Ok(Some("abc".into())));
        assert_eq!(from_w(Some(&w(&"y".repeat(261)))), Err(206));
        assert_eq!(from_w(Some(&[0xD800, 0x41])), Err(123), "lone surrogate");
        // The length check comes first, even for invalid UTF-16.
        assert_eq!(from_w(Some(&[0xD800; 300])), Err(206));
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
