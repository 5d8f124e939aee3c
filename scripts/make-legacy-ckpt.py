#!/usr/bin/env python3
"""Writes small torch.save files in the legacy (pre-zip) format, with zip-format twins, for
test/legacy.test.ts. Usage: make-legacy-ckpt.py [OUT_DIR]  (default: test/data/legacy).

Every value is a simple function of its position, so the test computes what each tensor must
hold without reading torch's output independently:
  base(n) = arange(n) * 0.25 - 2 for floats, arange(n) * 7 - 20 (int), arange(n) % 3 == 0 (bool).
"""
import os
import sys
from collections import OrderedDict

import torch

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'data', 'legacy')
os.makedirs(out, exist_ok=True)


def base(n, dtype):
    a = torch.arange(n, dtype=torch.float64)
    if dtype == torch.bool:
        return (torch.arange(n) % 3) == 0
    if dtype.is_floating_point:
        return (a * 0.25 - 2).to(dtype)
    if dtype == torch.uint8:
        return (torch.arange(n) * 7 % 256).to(dtype)
    if dtype == torch.int64:
        return torch.arange(n, dtype=torch.int64) * 1_000_000_007 - 20
    return (torch.arange(n) * 7 - 20).to(dtype)


def save_both(name, obj):
    torch.save(obj, os.path.join(out, name + '.legacy.pt'), _use_new_zipfile_serialization=False)
    torch.save(obj, os.path.join(out, name + '.zip.pt'))


sd = OrderedDict()
for dt in ['float32', 'float16', 'bfloat16', 'float64', 'int64', 'int32', 'uint8', 'bool']:
    sd['dtype.' + dt] = base(12, getattr(torch, dt)).reshape(3, 4)
grid = base(24, torch.float32).reshape(4, 6)
sd['view.grid'] = grid
sd['view.transposed'] = grid.t()                # strides (1, 6), shares grid's storage
sd['view.sliced'] = grid[1:3, 2:5]              # offset 8, strides (6, 1)
sd['view.strided'] = grid[:, ::2]               # strides (6, 2)
sd['view.row'] = grid[2]                        # offset 12
sd['view.tied'] = grid                          # the same tensor twice
half = base(10, torch.float16)
sd['view.half_tail'] = half[3:]                 # fp16 view with an offset
sd['view.long_t'] = base(6, torch.int64).reshape(2, 3).t()
sd['scalar'] = torch.tensor(2.5)
sd['empty'] = torch.zeros(0, 3)
save_both('state', sd)
# The same state dict with pickle protocol 4 (frames, SHORT_BINUNICODE, MEMOIZE).
torch.save(sd, os.path.join(out, 'state_p4.legacy.pt'), _use_new_zipfile_serialization=False, pickle_protocol=4)

# A Lightning-like nested dict: the state dict beside nested plain data and a nested tensor.
save_both('nested', {
    'state_dict': OrderedDict([('enc.w', base(6, torch.float32).reshape(2, 3)), ('enc.b', base(2, torch.float32))]),
    'epoch': 7,
    'hparams': {'ddconfig': {'ch_mult': [1, 2, 2], 'name': 'tiny', 'pair': (3, 'x')}, 'lr': 1e-4},
    'optimizer': {'state': {0: {'exp_avg': base(2, torch.float32) * 0}}},
})

# Dtypes mergevq tensors cannot hold (int8, int16): described, then refused when loaded.
save_both('narrow_ints', OrderedDict([('i8', base(4, torch.int8)), ('i16', base(4, torch.int16))]))
print('wrote', sorted(os.listdir(out)))
