# Reference attention in PyTorch 1.13 (no SDPA there): materialized softmax(QK^T * scale + bias) V,
# which is what the MergeVQ reference computes. Args (JSON): B, H, N, M, hd, causal, bias,
# q_offset, kv_len, mode ('fwd' or 'bwd'). Prints {"ms": median} on the last line.
import json
import os
import sys
import time

import torch

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '2')))
a = json.loads(sys.argv[1])
B, H, N, M, hd = a['B'], a['H'], a['N'], a['M'], a['hd']
q_offset = a.get('q_offset', 0)
kv_len = a.get('kv_len', M)
g = torch.Generator().manual_seed(0)
q = torch.randn(B, H, N, hd, generator=g)
k = torch.randn(B, H, M, hd, generator=g)
v = torch.randn(B, H, M, hd, generator=g)
bias = torch.randn(B, 1, 1, M, generator=g).abs().log1p() if a.get('bias') else None
mask = None
j = torch.arange(M)
i = torch.arange(N) + q_offset
vis = (j[None, :] < kv_len).expand(N, M)
if a.get('causal'):
    vis = vis & (j[None, :] <= i[:, None])
if not bool(vis.all()):
    mask = torch.zeros(N, M).masked_fill(~vis, float('-inf'))
scale = hd ** -0.5


def attn(q, k, v):
    s = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        s = s + bias
    if mask is not None:
        s = s + mask
    return s.softmax(dim=-1) @ v


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


reps, warm = 15, 3
ts = []
if a.get('mode', 'fwd') == 'fwd':
    with torch.no_grad():
        for r in range(warm + reps):
            t0 = time.perf_counter()
            attn(q, k, v)
            if r >= warm:
                ts.append((time.perf_counter() - t0) * 1e3)
else:
    qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
    go = torch.randn(B, H, N, hd, generator=g)
    for r in range(warm + reps):
        qg.grad = kg.grad = vg.grad = None
        out = attn(qg, kg, vg)
        t0 = time.perf_counter()
        out.backward(go)
        if r >= warm:
            ts.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({'ms': median(ts)}))
