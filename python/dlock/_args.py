"""Argument conversion, as pywin32's SWIG typemaps do it (DWORD masked to 32 bits, BOOL and
LONG as C ints with overflow checks, names as str, bytes or None)."""

import operator

_INT_MIN = -(2**31)
_INT_MAX = 2**31 - 1


def dword(value):
    """A DWORD: any integer, masked to 32 bits (so -1 is 0xFFFFFFFF, as pywin32 allows)."""
    return operator.index(value) & 0xFFFFFFFF


def c_int(value):
    """A BOOL or LONG: an integer that fits a signed 32-bit C int."""
    v = operator.index(value)
    if v < _INT_MIN:
        raise OverflowError("signed integer is less than minimum")
    if v > _INT_MAX:
        raise OverflowError("signed integer is greater than maximum")
    return v


def name(value, null_ok):
    """An object name for the A functions: str (encoded UTF-8), bytes (passed as they are), or
    None (NULL) where the call allows an unnamed object."""
    if value is None:
        if null_ok:
            return None
        raise TypeError("None is not a valid string in this context")
    if isinstance(value, str):
        # Lone surrogates go through, for libdlock to refuse with ERROR_INVALID_NAME, as a
        # malformed name fails on Windows, rather than as a Python encoding error.
        encoded = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, (bytes, bytearray)):
        encoded = bytes(value)
    else:
        raise TypeError(
            f"Objects of type '{type(value).__name__}' can not be converted to Unicode."
        )
    if b"\0" in encoded:
        raise ValueError("embedded null character")
    return encoded
