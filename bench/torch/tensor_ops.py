# Torch timings for bench/tensor_ops.ts: the same cases, median ms each, printed as one JSON line.
import json, os, sys, time
import torch

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '2')))
cases = json.loads(sys.argv[1])
out = {}
g = torch.Generator().manual_seed(0)
for c in cases:
    name = c['name']
    if name == 'add_same':
        a = torch.randn(c['shape'], generator=g); b = torch.randn(c['shape'], generator=g)
        fn = lambda: a + b
    elif name == 'add_bias':
        a = torch.randn(c['shape'], generator=g); b = torch.randn(c['bias'], generator=g)
        fn = lambda: a + b
    elif name == 'permute_tr':
        a = torch.randn(c['shape'], generator=g)
        fn = lambda: a.permute(0, 2, 1).contiguous()
    elif name == 'sum_bias_grad':
        a = torch.randn(c['shape'], generator=g)
        fn = lambda: a.sum(dim=(0, 2, 3))
    elif name == 'sum_all':
        a = torch.rand(c['shape'], generator=g)
        fn = lambda: a.sum()
    elif name == 'embedding':
        w = torch.randn(c['weight'], generator=g); idx = torch.randint(0, c['weight'][0], (c['n'],), generator=g)
        fn = lambda: torch.nn.functional.embedding(idx, w)
    elif name == 'depth_to_space':
        a = torch.randn(c['shape'], generator=g); r = c['block']
        B, C4, H, W = c['shape']; C = C4 // (r * r)
        fn = lambda: a.view(B, r, r, C, H, W).permute(0, 3, 4, 1, 5, 2).reshape(B, C, H * r, W * r)
    else:
        continue
    for _ in range(2):
        fn()
    ts = []
    for _ in range(9):
        t0 = time.perf_counter(); fn(); ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    out[name] = ts[len(ts) // 2]
print(json.dumps(out))
