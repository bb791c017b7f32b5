"""The uncontended WaitForSingleObject + ReleaseMutex pair from Python (the dlock package, in
pywin32's shape), as dlock-bench pair measures it from Rust. Usage: pair.py [N]. Run by
capi/bench/run.sh."""

import os
import sys
import time

from dlock import win32api, win32event

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
h = win32event.CreateMutex(None, False, f"bench-pair-py-{os.getpid()}")
for _ in range(50):
    win32event.WaitForSingleObject(h, win32event.INFINITE)
    win32event.ReleaseMutex(h)
samples = []
start = time.perf_counter()
for _ in range(n):
    t = time.perf_counter()
    if win32event.WaitForSingleObject(h, win32event.INFINITE) != win32event.WAIT_OBJECT_0:
        sys.exit(f"wait failed: {win32api.GetLastError()}")
    win32event.ReleaseMutex(h)
    samples.append(time.perf_counter() - t)
total = time.perf_counter() - start
samples.sort()
print(
    f"pair (Python): n={n} median={samples[n // 2] * 1e6:.0f}us "
    f"p99={samples[int(n * 0.99)] * 1e6:.0f}us pairs/s={n / total:.0f}"
)
h.Close()
