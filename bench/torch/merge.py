# One ToMe step in torch: bipartite soft matching (cosine scores of even vs odd tokens, class token
# protected, r best edges merged) + size-weighted merge with scatter_reduce. Prints {"ms": median}.
import json
import math
import os
import statistics
import sys
import time

import torch

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '2')))
a = json.loads(sys.argv[1])
B, N, C, H, r = a['b'], a['n'], a['c'], a['h'], a['r']
g = torch.Generator().manual_seed(0)
metric = torch.rand(B, N, H, generator=g) - 0.5
x = torch.rand(B, N, C, generator=g) - 0.5
size = torch.ones(B, N, 1)


def step():
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True)
        sa, sb = m[:, ::2], m[:, 1::2]
        scores = sa @ sb.transpose(-1, -2)
        scores[:, 0, :] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        edge = node_max.argsort(dim=-1, descending=True)[..., None]
        unm, src = edge[:, r:], edge[:, :r]
        dst = node_idx[..., None].gather(dim=-2, index=src)
        unm = unm.sort(dim=1)[0]

        def merge(t):
            s, d = t[:, ::2], t[:, 1::2]
            n, t1, c = s.shape
            u = s.gather(dim=-2, index=unm.expand(n, t1 - r, c))
            s = s.gather(dim=-2, index=src.expand(n, r, c))
            d = d.scatter_reduce(-2, dst.expand(n, r, c), s, reduce='sum')
            return torch.cat([u, d], dim=1)

        xs = merge(x * size)
        ss = merge(size)
        return xs / ss, ss


for _ in range(3):
    step()
ts = []
for _ in range(21):
    t0 = time.perf_counter()
    step()
    ts.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({'ms': statistics.median(ts)}))
