"""Torch timings for the `optim` suite: a torch.optim.AdamW step (single-tensor, foreach=False)
and LitEma's update arithmetic, float32 CPU, one parameter tensor per size.

argv[1]: JSON {"sizes": [n, ...]}. Prints one JSON line: {"adamw": [ms, ...], "ema": [ms, ...]}.
"""
import json
import sys

import torch

from common import median_ms


def main():
    args = json.loads(sys.argv[1])
    out = {"adamw": [], "ema": []}
    for n in args["sizes"]:
        p = torch.nn.Parameter(torch.rand(n) * 2 - 1)
        p.grad = (torch.rand(n) * 2 - 1) * 0.1
        opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, foreach=False)
        out["adamw"].append(median_ms(opt.step, reps=9))
        shadow = torch.rand(n)
        decay = torch.tensor(0.999)
        with torch.no_grad():
            out["ema"].append(median_ms(lambda: shadow.sub_((1.0 - decay) * (shadow - p)), reps=9))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
