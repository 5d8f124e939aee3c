# The reference's LFQ entropy loss (logits 2 z.c over all 2^d codes, softmax / T = 0.01),
# forward + backward, materializing [N, 2^d]. Run once (it takes seconds and gigabytes).
# Prints {"ms": ..., "peak_mb": ...}: wall time and the growth of peak RSS.
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '2')))
args = json.loads(sys.argv[1])
n, d = int(args['n']), int(args['d'])
T = 0.01
g = torch.Generator().manual_seed(0)
z = torch.randn(n, d, generator=g).requires_grad_(True)
codes = torch.arange(2 ** d)
codebook = ((codes.unsqueeze(-1) >> torch.arange(d)) & 1).float() * 2 - 1


def step():
    logits = 2 * z @ codebook.t()
    probs = F.softmax(logits / T, -1)
    log_probs = F.log_softmax(logits / T + 1e-5, -1)
    avg = probs.mean(0)
    cb = -(avg * torch.log(avg + 1e-5)).sum()
    ps = (-(probs * log_probs).sum(-1)).mean()
    loss = ps - cb
    z.grad = None
    loss.backward()


# One timed run, no warm-up (a second run would double the minutes this takes).
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
step()
ms = (time.perf_counter() - t0) * 1e3
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
print(json.dumps({'ms': ms, 'peak_mb': peak}))
