/* Threads created by C (pthreads), per-thread last error and mutex ownership,
 * WaitForMultipleObjects, abandonment by a thread that exits, semaphores, W names.
 * Usage: threads PREFIX (a name prefix unique to the run). Prints "threads: ok" and exits 0,
 * or names the first check that failed and exits 1. */
#include <windows.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static HANDLE mutex, event;

#define CHECK(cond, what)                                                                   \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            printf("FAILED: %s (line %d, last error %u)\n", what, __LINE__, GetLastError()); \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

static void *owner(void *arg) {
    (void)arg;
    SetLastError(1234);
    CHECK(WaitForSingleObject(mutex, INFINITE) == WAIT_OBJECT_0, "the owner thread acquires");
    CHECK(GetLastError() == 1234, "a successful wait leaves the last error alone");
    CHECK(SetEvent(event), "SetEvent");
    return NULL; /* ends owning the mutex: it becomes abandoned */
}

static void *stranger(void *arg) {
    (void)arg;
    CHECK(!ReleaseMutex(mutex), "a thread that does not own the mutex cannot release it");
    CHECK(GetLastError() == ERROR_NOT_OWNER, "ERROR_NOT_OWNER");
    return NULL;
}

int main(int argc, char **argv) {
    char name[200];
    CHECK(argc == 2, "usage: threads PREFIX");

    snprintf(name, sizeof name, "%s.mutex", argv[1]);
    mutex = CreateMutexA(NULL, FALSE, name);
    CHECK(mutex != NULL, "CreateMutexA");
    snprintf(name, sizeof name, "%s.event", argv[1]);
    event = CreateEventA(NULL, TRUE, FALSE, name);
    CHECK(event != NULL, "CreateEventA");

    SetLastError(7);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, owner, NULL) == 0, "pthread_create");
    CHECK(pthread_join(t, NULL) == 0, "pthread_join");
    CHECK(GetLastError() == 7, "the last error is per thread");

    HANDLE both[2] = {event, mutex};
    DWORD r = WaitForMultipleObjects(2, both, TRUE, 10000);
    CHECK(r == WAIT_ABANDONED_0, "wait-all gets the event and the abandoned mutex");
    CHECK(pthread_create(&t, NULL, stranger, NULL) == 0 && pthread_join(t, NULL) == 0,
          "the stranger thread");
    CHECK(WaitForSingleObject(mutex, 0) == WAIT_OBJECT_0, "the owner re-enters");
    CHECK(ReleaseMutex(mutex) && ReleaseMutex(mutex), "two releases for two acquisitions");
    CHECK(!ReleaseMutex(mutex) && GetLastError() == ERROR_NOT_OWNER, "a third fails");
    CHECK(WaitForMultipleObjects(2, both, FALSE, 0) == WAIT_OBJECT_0, "wait-any: the event");
    CHECK(!ReleaseMutex(mutex), "wait-any was satisfied by the event and took no mutex");

    snprintf(name, sizeof name, "%s.sem", argv[1]);
    HANDLE sem = CreateSemaphoreA(NULL, 1, 2, name);
    CHECK(sem != NULL && GetLastError() != ERROR_ALREADY_EXISTS, "CreateSemaphoreA");
    LONG previous = -1;
    CHECK(ReleaseSemaphore(sem, 1, &previous) && previous == 1, "ReleaseSemaphore");
    CHECK(!ReleaseSemaphore(sem, 1, &previous) && GetLastError() == ERROR_TOO_MANY_POSTS,
          "beyond the maximum");
    CHECK(WaitForSingleObject(sem, 0) == WAIT_OBJECT_0, "a semaphore unit");

    HANDLE wide = CreateMutexW(NULL, FALSE, u"dlock-capi-wide-\u00e9");
    CHECK(wide != NULL, "CreateMutexW");
    HANDLE narrow = OpenMutexA(SYNCHRONIZE, FALSE, "dlock-capi-wide-\xc3\xa9");
    CHECK(narrow != NULL, "the A and W names of one object meet");
    CHECK(OpenMutexA(MUTEX_ALL_ACCESS, FALSE, "\xff\xfe") == NULL
              && GetLastError() == ERROR_INVALID_NAME,
          "a name that is not UTF-8");

    CHECK(CloseHandle(narrow) && CloseHandle(wide) && CloseHandle(sem), "CloseHandle");
    CHECK(!CloseHandle(sem) && GetLastError() == ERROR_INVALID_HANDLE, "closed twice");
    CHECK(CloseHandle(event) && CloseHandle(mutex), "CloseHandle");
    printf("threads: ok\n");
    return 0;
}
