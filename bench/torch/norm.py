"""Torch timings for the `norm` suite: GroupNorm(32)+SiLU and LayerNorm, float32 CPU.

argv[1]: JSON {"gn": [[B, C, H, W], ...], "ln": [[R, C], ...]}. Prints one JSON line:
{"gn": [median ms, ...], "ln": [median ms, ...]}.
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '2')))


def median_ms(fn, reps=7, warmup=2, budget=3.0):
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


def main():
    args = json.loads(sys.argv[1])
    out = {"gn": [], "ln": []}
    with torch.no_grad():
        for shape in args["gn"]:
            x = torch.randn(*shape)
            w = torch.randn(shape[1])
            b = torch.randn(shape[1])
            out["gn"].append(median_ms(lambda: F.silu(F.group_norm(x, 32, w, b, 1e-6))))
        for shape in args["ln"]:
            x = torch.randn(*shape)
            w = torch.randn(shape[-1])
            b = torch.randn(shape[-1])
            out["ln"].append(median_ms(lambda: F.layer_norm(x, (shape[-1],), w, b, 1e-5)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
