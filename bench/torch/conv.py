# PyTorch reference for bench/conv.ts: {"C","H","O","k","s","p","g","backward"} -> {"ms": median}.
# backward times the input and weight gradients (and the bias sum) of one conv, like conv2d_backward.
import json
import sys

import torch

from common import median_ms
a = json.loads(sys.argv[1])
C, H, O, k, s, p, g = a['C'], a['H'], a['O'], a['k'], a['s'], a['p'], a['g']
x = torch.randn(1, C, H, H)
w = torch.randn(O, C // g, k, k) * 0.05
b = torch.randn(O) * 0.1
flops = 2 * O * ((H + 2 * p - k) // s + 1) ** 2 * (C // g) * k * k
reps = 5 if flops > 2e9 else 15
if a['backward']:
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    y = torch.nn.functional.conv2d(x, w, b, stride=s, padding=p, groups=g)
    gy = torch.randn_like(y)

    def fn():
        torch.autograd.grad(y, [x, w, b], gy, retain_graph=True)
else:
    def fn():
        with torch.no_grad():
            torch.nn.functional.conv2d(x, w, b, stride=s, padding=p, groups=g)
print(json.dumps({'ms': median_ms(fn, reps=reps, warmup=1, budget=5.0)}))
