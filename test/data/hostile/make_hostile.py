#!/usr/bin/env python3
"""Writes the hostile checkpoints of test/hostile.test.ts into this folder (no torch needed).

Each file reproduces one hole found by probing the readers as an attacker would; the test checks
that each is refused with a MergeVQError quickly and without large memory. Pickles are assembled
by hand (protocol 2 opcodes) so that the files hold exactly the structures described.
"""
import os
import random
import shutil
import struct
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.dirname(HERE)


def s(x):  # BINUNICODE
    b = x.encode()
    return b'X' + struct.pack('<I', len(b)) + b


def i(n):  # BININT for 32-bit values, LONG1 beyond
    if -2**31 <= n < 2**31:
        return b'J' + struct.pack('<i', n)
    b = n.to_bytes((n.bit_length() + 8) // 8, 'little', signed=True)
    return b'\x8a' + bytes([len(b)]) + b


def tup(*items):
    return b'(' + b''.join(items) + b't'


def tensor(key, numel, offset, size, stride, storage='FloatStorage'):
    pid = tup(s('storage'), b'ctorch\n' + storage.encode() + b'\n', s(key), s('cpu'), i(numel)) + b'Q'
    return b'ctorch._utils\n_rebuild_tensor_v2\n' + tup(pid, i(offset), tup(*map(i, size)), tup(*map(i, stride))) + b'R'


def state_dict(items):
    """{'state_dict': {k: v, ...}} where items are (key pickle bytes, value pickle bytes)."""
    body = b''.join(k + v for k, v in items)
    return b'\x80\x02}(' + s('state_dict') + b'}(' + body + b'uu.'


def ckpt(name, pkl, storages=None, compress=False, pkl_compress=False):
    with zipfile.ZipFile(os.path.join(HERE, name), 'w', zipfile.ZIP_STORED) as z:
        z.writestr(zipfile.ZipInfo('archive/data.pkl'), pkl, zipfile.ZIP_DEFLATED if pkl_compress else zipfile.ZIP_STORED)
        for k, v in (storages or {}).items():
            z.writestr(zipfile.ZipInfo('archive/data/' + k), v, zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
        z.writestr('archive/version', '3\n')


one = struct.pack('<f', 1.0)

# 1. One-byte corruption of the zip64 end-of-central-directory locator of a real torch file.
b = bytearray(open(os.path.join(DATA, 'plain_state_dict.pt'), 'rb').read())
loc = b.rfind(b'PK\x06\x07')
assert loc > 0, 'plain_state_dict.pt has no zip64 locator'
b[loc + 15] = 0x04  # the high byte of the zip64 record's offset
open(os.path.join(HERE, 'zip64_locator.pt'), 'wb').write(bytes(b))

# 2. A state-dict key that is a shared list DAG: L(i+1) = [L(i), L(i)], 40 deep (2^40 paths).
dag = b']q\x000'  # L0 = [] in memo 0
for d in range(1, 41):
    dag += b'(h' + bytes([d - 1]) + b'h' + bytes([d - 1]) + b'lq' + bytes([d]) + b'0'
dag += b'h' + bytes([40])
ckpt('dag_key.ckpt', state_dict([(dag, tensor('0', 1, 0, (1,), (1,)))]), {'0': one})

# 3. Stride-0 views of a 1-element storage: [2^28] (1 GiB dense) and [2^31, 2^31].
ckpt('stride0_expand.ckpt', state_dict([(s('w'), tensor('0', 1, 0, (2**28,), (0,)))]), {'0': one})
ckpt('stride0_huge.ckpt', state_dict([(s('w'), tensor('0', 1, 0, (2**31, 2**31), (0, 0)))]), {'0': one})

# 4. A flood of MARK opcodes: 64 MiB of '(' in a deflated data.pkl.
ckpt('mark_flood.ckpt', b'\x80\x02' + b'(' * (64 << 20), pkl_compress=True)

# 5. An INT of 20000 random digits (stored, so only the digit budget stops it).
rng = random.Random(11)
digits = ''.join(rng.choice('123456789') for _ in range(20000))
ckpt('huge_int.ckpt', b'\x80\x02}(' + s('state_dict') + b'}(' + s('n') + b'I' + digits.encode() + b'\nuu.')

# 6. A list nested 20000 deep as a key (stored: only the depth budget stops it).
deep = b']' * 20000 + b'a' * 19999
ckpt('deep_key.ckpt', state_dict([(deep, tensor('0', 1, 0, (1,), (1,)))]), {'0': one})

# 7. A compression bomb: a real 64 MiB tensor of zeros deflated to ~64 KB.
n = 16 << 20
ckpt('zip_bomb.ckpt', state_dict([(s('w'), tensor('0', n, 0, (n,), (1,)))]), {'0': bytes(4 * n)}, compress=True)

# 8. os.system beside a real state dict (the payload next to the weights).
ckpt('system_beside_state_dict.ckpt', b'\x80\x02}(' + s('state_dict') + b'}(' + s('w') + tensor('0', 1, 0, (1,), (1,)) + b'u' +
     s('payload') + b'cposix\nsystem\n' + tup(s('echo pwned')) + b'Ru.', {'0': one})

# 9. Many views of one storage: 64 views of a 1 MiB storage, 64 MiB (budget: 2 x 1 MiB + 16 MiB).
big = 1 << 18
items = [(s('w%d' % k), tensor('0', big, 0, (big,), (1,))) for k in range(64)]
ckpt('many_views.ckpt', state_dict(items), {'0': bytes(4 * big)}, compress=True)
# 10. A checkpoint whose state dict holds no tensor at all.
ckpt('empty_state_dict.ckpt', state_dict([(s('a'), b'G?\xf8\x00\x00\x00\x00\x00\x00')]))
print('wrote', sorted(f for f in os.listdir(HERE) if not f.endswith('.py')))
