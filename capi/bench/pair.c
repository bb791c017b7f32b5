/* The uncontended WaitForSingleObject + ReleaseMutex pair from C, as dlock-bench pair measures
 * it from Rust: N timed pairs on a mutex of its own after 50 untimed ones; prints the median,
 * p99 and pairs per second. Usage: pair [N] (default 2000). Run by capi/bench/run.sh. */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    char name[64];
    snprintf(name, sizeof name, "bench-pair-c-%d", (int)getpid());
    HANDLE h = CreateMutexA(NULL, FALSE, name);
    if (h == NULL) {
        printf("CreateMutex error: %u\n", GetLastError());
        return 1;
    }
    for (int i = 0; i < 50; i++) {
        WaitForSingleObject(h, INFINITE);
        ReleaseMutex(h);
    }
    double *samples = malloc(sizeof(double) * n);
    double start = now_us();
    for (int i = 0; i < n; i++) {
        double t = now_us();
        if (WaitForSingleObject(h, INFINITE) != WAIT_OBJECT_0 || !ReleaseMutex(h)) {
            printf("pair failed: %u\n", GetLastError());
            return 1;
        }
        samples[i] = now_us() - t;
    }
    double total = now_us() - start;
    qsort(samples, n, sizeof(double), by_value);
    printf("pair (C): n=%d median=%.0fus p99=%.0fus pairs/s=%.0f\n", n, samples[n / 2],
           samples[(int)(n * 0.99)], n / (total / 1e6));
    CloseHandle(h);
    return 0;
}
