/*
 * dlock/windows.h: the Win32 named-object API (mutexes, events, semaphores, waits, last
 * error) for C and C++ on Linux, served by a dlock cluster through libdlock.
 *
 * Code written for Windows compiles unchanged with `cc -I<capi>/include/compat ... -ldlock`
 * (include/compat/windows.h includes this file), or includes <dlock/windows.h> directly with
 * `-I<capi>/include`. Types, values and semantics are Windows' own; the differences are listed
 * in capi/README.md. The cluster is named by DLOCK_ENDPOINTS (default 127.0.0.1:7700), as for
 * every dlock client; `Local\` names are served on this host without a cluster.
 *
 * Strings: the A functions take UTF-8 names (the "ANSI code page" of a Linux process). WCHAR is
 * a 16-bit UTF-16 code unit (char16_t), not wchar_t, which is 32 bits on Linux: write wide names
 * as u"..." literals or with TEXT("..."), which gives u"..." when UNICODE is defined. L"..."
 * literals are wchar_t arrays and do not convert to LPCWSTR.
 */
#ifndef DLOCK_WINDOWS_H
#define DLOCK_WINDOWS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#else
#include <uchar.h>
#endif

/* ---- Types ---- */

typedef void *HANDLE;
typedef HANDLE *PHANDLE, *LPHANDLE;
typedef uint32_t DWORD;
typedef DWORD *PDWORD, *LPDWORD;
typedef int BOOL;
typedef BOOL *PBOOL, *LPBOOL;
typedef int32_t LONG;
typedef LONG *PLONG, *LPLONG;
typedef uint32_t UINT;
typedef uint8_t BYTE;
typedef uint16_t WORD;
typedef void VOID;
typedef void *PVOID, *LPVOID;
typedef const void *LPCVOID;
typedef char CHAR;
typedef char16_t WCHAR;
typedef CHAR *LPSTR;
typedef const CHAR *LPCSTR;
typedef WCHAR *LPWSTR;
typedef const WCHAR *LPCWSTR;
typedef uint64_t ULONGLONG;

#ifdef UNICODE
typedef WCHAR TCHAR;
typedef LPCWSTR LPCTSTR;
typedef LPWSTR LPTSTR;
#define __DLOCK_TEXT(s) u##s
#else
typedef CHAR TCHAR;
typedef LPCSTR LPCTSTR;
typedef LPSTR LPTSTR;
#define __DLOCK_TEXT(s) s
#endif
#define TEXT(s) __DLOCK_TEXT(s)
#define _T(s) __DLOCK_TEXT(s)

/* Accepted and ignored: dlock has no security descriptors, and handles are not inherited. */
typedef struct _SECURITY_ATTRIBUTES {
    DWORD nLength;
    LPVOID lpSecurityDescriptor;
    BOOL bInheritHandle;
} SECURITY_ATTRIBUTES, *PSECURITY_ATTRIBUTES, *LPSECURITY_ATTRIBUTES;

#ifndef NULL
#define NULL ((void *)0)
#endif
#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif

#define WINAPI
#define CALLBACK
#define INVALID_HANDLE_VALUE ((HANDLE)(intptr_t)-1)

/* ---- Wait results and limits ---- */

#define WAIT_OBJECT_0 ((DWORD)0x00000000L)
#define WAIT_ABANDONED ((DWORD)0x00000080L)
#define WAIT_ABANDONED_0 ((DWORD)0x00000080L)
#define WAIT_IO_COMPLETION ((DWORD)0x000000C0L)
#define WAIT_TIMEOUT ((DWORD)0x00000102L)
#define WAIT_FAILED ((DWORD)0xFFFFFFFFL)
#define INFINITE ((DWORD)0xFFFFFFFFL)
#define MAXIMUM_WAIT_OBJECTS 64
#define MAX_PATH 260

/* ---- Error codes (GetLastError) ---- */

#define ERROR_SUCCESS 0L
#define NO_ERROR 0L
#define ERROR_FILE_NOT_FOUND 2L
#define ERROR_PATH_NOT_FOUND 3L
#define ERROR_ACCESS_DENIED 5L
#define ERROR_INVALID_HANDLE 6L
#define ERROR_NOT_SUPPORTED 50L
#define ERROR_BAD_NET_NAME 67L
#define ERROR_INVALID_PARAMETER 87L
#define ERROR_INVALID_NAME 123L
#define ERROR_BAD_PATHNAME 161L
#define ERROR_ALREADY_EXISTS 183L
#define ERROR_FILENAME_EXCED_RANGE 206L
#define ERROR_NOT_OWNER 288L
#define ERROR_TOO_MANY_POSTS 298L
#define ERROR_MUTANT_LIMIT_EXCEEDED 587L
#define ERROR_OPERATION_ABORTED 995L
#define ERROR_IO_PENDING 997L
#define ERROR_NETWORK_UNREACHABLE 1231L
#define ERROR_CONNECTION_ABORTED 1236L
#define ERROR_REVISION_MISMATCH 1306L
#define ERROR_PRIVILEGE_NOT_HELD 1314L
#define ERROR_INTERNAL_ERROR 1359L
#define ERROR_FILE_CORRUPT 1392L
#define ERROR_NO_SYSTEM_RESOURCES 1450L
#define ERROR_TIMEOUT 1460L

/* ---- Access rights ---- */

#define DELETE 0x00010000L
#define READ_CONTROL 0x00020000L
#define WRITE_DAC 0x00040000L
#define WRITE_OWNER 0x00080000L
#define SYNCHRONIZE 0x00100000L
#define STANDARD_RIGHTS_REQUIRED 0x000F0000L
#define STANDARD_RIGHTS_READ READ_CONTROL
#define STANDARD_RIGHTS_WRITE READ_CONTROL
#define STANDARD_RIGHTS_EXECUTE READ_CONTROL
#define ACCESS_SYSTEM_SECURITY 0x01000000L
#define MAXIMUM_ALLOWED 0x02000000L
#define GENERIC_ALL 0x10000000L
#define GENERIC_EXECUTE 0x20000000L
#define GENERIC_WRITE 0x40000000L
#define GENERIC_READ 0x80000000L
#define MUTANT_QUERY_STATE 0x0001
#define MUTANT_ALL_ACCESS 0x001F0001
#define MUTEX_MODIFY_STATE 0x0001
#define MUTEX_ALL_ACCESS 0x001F0001
#define EVENT_QUERY_STATE 0x0001
#define EVENT_MODIFY_STATE 0x0002
#define EVENT_ALL_ACCESS 0x001F0003
#define SEMAPHORE_QUERY_STATE 0x0001
#define SEMAPHORE_MODIFY_STATE 0x0002
#define SEMAPHORE_ALL_ACCESS 0x001F0003

/* ---- Creation flags (the Ex functions) ---- */

#define CREATE_MUTEX_INITIAL_OWNER 0x00000001
#define CREATE_EVENT_MANUAL_RESET 0x00000001
#define CREATE_EVENT_INITIAL_SET 0x00000002

/* ---- Functions ---- */

HANDLE CreateMutexA(LPSECURITY_ATTRIBUTES lpMutexAttributes, BOOL bInitialOwner, LPCSTR lpName);
HANDLE CreateMutexW(LPSECURITY_ATTRIBUTES lpMutexAttributes, BOOL bInitialOwner, LPCWSTR lpName);
HANDLE CreateMutexExA(LPSECURITY_ATTRIBUTES lpMutexAttributes, LPCSTR lpName, DWORD dwFlags,
                      DWORD dwDesiredAccess);
HANDLE CreateMutexExW(LPSECURITY_ATTRIBUTES lpMutexAttributes, LPCWSTR lpName, DWORD dwFlags,
                      DWORD dwDesiredAccess);
HANDLE OpenMutexA(DWORD dwDesiredAccess, BOOL bInheritHandle, LPCSTR lpName);
HANDLE OpenMutexW(DWORD dwDesiredAccess, BOOL bInheritHandle, LPCWSTR lpName);
BOOL ReleaseMutex(HANDLE hMutex);

HANDLE CreateEventA(LPSECURITY_ATTRIBUTES lpEventAttributes, BOOL bManualReset,
                    BOOL bInitialState, LPCSTR lpName);
HANDLE CreateEventW(LPSECURITY_ATTRIBUTES lpEventAttributes, BOOL bManualReset,
                    BOOL bInitialState, LPCWSTR lpName);
HANDLE CreateEventExA(LPSECURITY_ATTRIBUTES lpEventAttributes, LPCSTR lpName, DWORD dwFlags,
                      DWORD dwDesiredAccess);
HANDLE CreateEventExW(LPSECURITY_ATTRIBUTES lpEventAttributes, LPCWSTR lpName, DWORD dwFlags,
                      DWORD dwDesiredAccess);
HANDLE OpenEventA(DWORD dwDesiredAccess, BOOL bInheritHandle, LPCSTR lpName);
HANDLE OpenEventW(DWORD dwDesiredAccess, BOOL bInheritHandle, LPCWSTR lpName);
BOOL SetEvent(HANDLE hEvent);
BOOL ResetEvent(HANDLE hEvent);
BOOL PulseEvent(HANDLE hEvent);

HANDLE CreateSemaphoreA(LPSECURITY_ATTRIBUTES lpSemaphoreAttributes, LONG lInitialCount,
                        LONG lMaximumCount, LPCSTR lpName);
HANDLE CreateSemaphoreW(LPSECURITY_ATTRIBUTES lpSemaphoreAttributes, LONG lInitialCount,
                        LONG lMaximumCount, LPCWSTR lpName);
HANDLE CreateSemaphoreExA(LPSECURITY_ATTRIBUTES lpSemaphoreAttributes, LONG lInitialCount,
                          LONG lMaximumCount, LPCSTR lpName, DWORD dwFlags,
                          DWORD dwDesiredAccess);
HANDLE CreateSemaphoreExW(LPSECURITY_ATTRIBUTES lpSemaphoreAttributes, LONG lInitialCount,
                          LONG lMaximumCount, LPCWSTR lpName, DWORD dwFlags,
                          DWORD dwDesiredAccess);
HANDLE OpenSemaphoreA(DWORD dwDesiredAccess, BOOL bInheritHandle, LPCSTR lpName);
HANDLE OpenSemaphoreW(DWORD dwDesiredAccess, BOOL bInheritHandle, LPCWSTR lpName);
BOOL ReleaseSemaphore(HANDLE hSemaphore, LONG lReleaseCount, LPLONG lpPreviousCount);

DWORD WaitForSingleObject(HANDLE hHandle, DWORD dwMilliseconds);
DWORD WaitForMultipleObjects(DWORD nCount, const HANDLE *lpHandles, BOOL bWaitAll,
                             DWORD dwMilliseconds);
DWORD SignalObjectAndWait(HANDLE hObjectToSignal, HANDLE hObjectToWaitOn, DWORD dwMilliseconds,
                          BOOL bAlertable);
BOOL CloseHandle(HANDLE hObject);

DWORD GetLastError(void);
void SetLastError(DWORD dwErrCode);

/* dlock's own: the fencing token of the calling thread's current hold of a mutex (for a
 * cluster mutex the Raft log index of the grant, increasing across all grants of the cluster;
 * for a Local\ or unnamed mutex the count of that mutex's acquisitions), or 0 if the thread
 * does not own it (the last error is then left alone). On failure it returns 0 and sets the
 * last error (6 for a bad or non-mutex handle, or a cluster code). Give the token to the
 * resources the mutex protects so that they can refuse a stale owner. */
ULONGLONG DlockGetFencingToken(HANDLE hMutex);

/* ---- Generic names, as windows.h defines them ---- */

#ifdef UNICODE
#define CreateMutex CreateMutexW
#define CreateMutexEx CreateMutexExW
#define OpenMutex OpenMutexW
#define CreateEvent CreateEventW
#define CreateEventEx CreateEventExW
#define OpenEvent OpenEventW
#define CreateSemaphore CreateSemaphoreW
#define CreateSemaphoreEx CreateSemaphoreExW
#define OpenSemaphore OpenSemaphoreW
#else
#define CreateMutex CreateMutexA
#define CreateMutexEx CreateMutexExA
#define OpenMutex OpenMutexA
#define CreateEvent CreateEventA
#define CreateEventEx CreateEventExA
#define OpenEvent OpenEventA
#define CreateSemaphore CreateSemaphoreA
#define CreateSemaphoreEx CreateSemaphoreExA
#define OpenSemaphore OpenSemaphoreA
#endif

#ifdef __cplusplus
}
#endif

#endif /* DLOCK_WINDOWS_H */
