"""The system message text of the error codes in :mod:`dlock.winerror`, as Windows'
``FormatMessage`` gives it (without the trailing CR LF, which callers add where Windows has it).
"""

MESSAGES = {
    0: "The operation completed successfully.",
    1: "Incorrect function.",
    2: "The system cannot find the file specified.",
    3: "The system cannot find the path specified.",
    5: "Access is denied.",
    6: "The handle is invalid.",
    8: "Not enough memory resources are available to process this command.",
    14: "Not enough memory resources are available to complete this operation.",
    50: "The request is not supported.",
    67: "The network name cannot be found.",
    87: "The parameter is incorrect.",
    121: "The semaphore timeout period has expired.",
    122: "The data area passed to a system call is too small.",
    123: "The filename, directory name, or volume label syntax is incorrect.",
    161: "The specified path is invalid.",
    183: "Cannot create a file when that file already exists.",
    206: "The filename or extension is too long.",
    258: "The wait operation timed out.",
    288: "Attempt to release mutex not owned by caller.",
    298: "Too many posts were made to a semaphore.",
    317: "The system cannot find message text for message number 0x%1 in the message file "
    "for %2.",
    587: "An attempt was made to acquire a mutant such that its maximum count would have been "
    "exceeded.",
    995: "The I/O operation has been aborted because of either a thread exit or an application "
    "request.",
    997: "Overlapped I/O operation is in progress.",
    1231: "The network location cannot be reached. For information about network "
    "troubleshooting, see Windows Help.",
    1236: "The network connection was aborted by the local system.",
    1306: "Indicates two revision levels are incompatible.",
    1314: "A required privilege is not held by the client.",
    1359: "An internal error occurred.",
    1392: "The file or directory is corrupted and unreadable.",
    1450: "Insufficient system resources exist to complete the requested service.",
    1460: "This operation returned because the timeout period expired.",
    1460: "This operation returned because the timeout period expired.",
}

# What pywin32 puts in an exception when the system has no text for the code.
NO_MESSAGE = "No error message is available"


def strerror(code):
    """The ``strerror`` of a :class:`pywintypes.error` for ``code``."""
    if code == 0:
        return NO_MESSAGE
    return MESSAGES.get(code & 0xFFFFFFFF, NO_MESSAGE)
