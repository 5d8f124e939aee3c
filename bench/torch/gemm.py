# PyTorch reference for bench/gemm.ts: {"kind": "matmul"|"linear", "M", "N", "K"} -> {"ms": median}.
import json
import sys

import torch

from common import median_ms
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
    ms = median_ms(fn, reps=reps, warmup=2, budget=4.0)
print(json.dumps({'ms': ms}))
