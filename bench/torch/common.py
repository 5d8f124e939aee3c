"""Shared by the torch reference scripts: thread count from OMP_NUM_THREADS, and median timing."""
import os
import time

import torch

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '2')))


def median_ms(fn, reps=7, warmup=2, budget=3.0):
    """Median wall time of fn() in ms over up to `reps` runs after `warmup` runs, time-boxed to
    about `budget` seconds (at least 3 runs)."""
    for _ in range(warmup):
        fn()
    ts = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget and len(ts) >= 3:
            break
    ts.sort()
    m = len(ts) // 2
    return ts[m] if len(ts) % 2 else (ts[m - 1] + ts[m]) / 2
