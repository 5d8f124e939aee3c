# PyTorch reference for bench/gemm.ts: {"kind": "matmul"|"linear", "M", "N", "K"} -> {"ms": median}.
import json
import os
import sys
import time

import torch

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '2')))
args = json.loads(sys.argv[1])
M, N, K = args['M'], args['N'], args['K']
flops = 2 * M * N * K
reps = 7 if flops > 4e9 else 25
with torch.no_grad():
    if args['kind'] == 'matmul':
        a, b = torch.randn(M, K), torch.randn(K, N)
        fn = lambda: torch.matmul(a, b)
    else:
        x, w, bias = torch.randn(M, K), torch.randn(N, K) * 0.05, torch.randn(N) * 0.1
        fn = lambda: torch.nn.functional.linear(x, w, bias)
    for _ in range(2):
        fn()
    ts = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > 4 and len(ts) >= 3:
            break
ts.sort()
print(json.dumps({'ms': ts[len(ts) // 2]}))
