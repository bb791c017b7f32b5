/* Calls made where a thread's or the process's thread-locals are already gone, and after
 * fork: none may abort or hang. Usage: exit_paths NAME. Prints what each call returned. */
#include <windows.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static HANDLE mutex;
static pthread_key_t key;

/* Runs after main returned, when glibc has destroyed the main thread's thread-locals. */
static void close_at_exit(void) {
    printf("atexit CloseHandle: %s\n", CloseHandle(mutex) ? "ok" : "failed");
    fflush(stdout);
}

/* Runs as the worker thread exits, after its thread-locals (the Rust ones included). */
static void release_in_key_destructor(void *value) {
    BOOL released = ReleaseMutex((HANDLE)value);
    printf("key destructor ReleaseMutex: %s\n", released ? "ok" : "refused");
    fflush(stdout);
}

static void *worker(void *arg) {
    if (WaitForSingleObject((HANDLE)arg, 10000) != WAIT_OBJECT_0) {
        printf("worker: wait failed %u\n", GetLastError());
        exit(1);
    }
    pthread_setspecific(key, arg);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    mutex = CreateMutexA(NULL, FALSE, argv[1]);
    if (mutex == NULL) {
        printf("CreateMutexA failed %u\n", GetLastError());
        return 1;
    }
    pthread_key_create(&key, release_in_key_destructor);
    pthread_t t;
    pthread_create(&t, NULL, worker, mutex);
    pthread_join(t, NULL);

    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        HANDLE h = CreateMutexA(NULL, FALSE, "exit-paths-child");
        printf("child: %s %u\n", h != NULL ? "created" : "failed", GetLastError());
        fflush(stdout);
        exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    printf("child exited %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);

    atexit(close_at_exit);
    return 0;
}
