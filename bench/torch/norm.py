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

from common import median_ms


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
