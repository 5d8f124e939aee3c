#!/usr/bin/env python3
"""Writes the small PyTorch checkpoints that test/checkpoint.test.ts loads.

Run: /usr/bin/python3 scripts/make-test-ckpt.py [outdir]   (default test/data; needs torch)

Outputs
  lightning.ckpt        a Lightning-like checkpoint: {'state_dict': OrderedDict, 'epoch', ...}
                        with f32/f16/bf16/f64/i64/i32/u8/bool tensors, a transposed view, two
                        tensors sharing one storage at different offsets, a scalar, an
                        nn.Parameter, discriminator/loss keys, optimizer states and hyper_parameters
                        (a Lightning AttributeDict) holding a set, bytes and an object of a class
                        outside the unpickler's allowlist.
  lightning_ema.ckpt    the same model with a LitEma copy (keys 'model_ema.<name without dots>',
                        'model_ema.decay', 'model_ema.num_updates'), values different from raw.
  plain_state_dict.pt   a bare state_dict (torch.save(model.state_dict())), protocol 2.
  expected.safetensors  the values the loader must produce (contiguous, row-major), written by
                        hand below so the script needs nothing but torch; names 'raw.<key>' and
                        'ema.<key>'; metadata holds the scalar top-level entries as JSON.
  malicious_os_system.ckpt   a torch-style zip whose data.pkl names os.system (hand-written opcodes).
  malicious_reduce.ckpt      data.pkl made by pickling an object whose __reduce__ is builtins.eval,
                             nested inside an otherwise valid state_dict.
"""
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import torch

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), '..', 'test', 'data')
os.makedirs(out, exist_ok=True)
torch.manual_seed(int.from_bytes(os.urandom(4), 'little'))  # fresh values each run; expected.safetensors records them

# A class from a module that is not importable by the loader (as Lightning's AttributeDict would be).
fake = types.ModuleType('pytorch_lightning.utilities.parsing')


class AttributeDict(dict):
    pass


AttributeDict.__module__ = 'pytorch_lightning.utilities.parsing'
fake.AttributeDict = AttributeDict
sys.modules['pytorch_lightning'] = types.ModuleType('pytorch_lightning')
sys.modules['pytorch_lightning.utilities'] = types.ModuleType('pytorch_lightning.utilities')
sys.modules['pytorch_lightning.utilities.parsing'] = fake

# An arbitrary user class in the hyper-parameters: outside the loader's allowlist.
fake_loss = types.ModuleType('taming.modules.losses.vqperceptual')


class LossConfig:
    def __init__(self, **kw):
        self.__dict__.update(kw)


LossConfig.__module__ = 'taming.modules.losses.vqperceptual'
fake_loss.LossConfig = LossConfig
for m in ['taming', 'taming.modules', 'taming.modules.losses']:
    sys.modules[m] = types.ModuleType(m)
sys.modules['taming.modules.losses.vqperceptual'] = fake_loss

base = torch.randn(10)
sd = OrderedDict()
sd['encoder.conv_in.weight'] = torch.randn(4, 3, 3, 3)
sd['encoder.norm.weight'] = torch.rand(4) + 0.5
sd['encoder.proj.weight'] = torch.randn(5, 3).t()  # non-contiguous: strides (1, 3)
sd['encoder.big'] = base
sd['encoder.slice'] = base[3:7]  # same storage, offset 3
sd['encoder.strided'] = base[1::3]  # same storage, offset 1, stride 3
sd['decoder.half'] = torch.randn(2, 3).half()
sd['decoder.bf16'] = torch.randn(3, 2).bfloat16()
sd['decoder.double'] = torch.randn(2, 2, dtype=torch.float64)
sd['quantize.index'] = torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4) * 1000003
sd['quantize.i32'] = torch.randint(-100000, 100000, (5,), dtype=torch.int32)
sd['quantize.u8'] = torch.randint(0, 256, (2, 2), dtype=torch.uint8)
sd['quantize.mask'] = torch.rand(6) > 0.5
sd['quantize.scale'] = torch.tensor(0.25 + torch.rand(()).item())  # 0-d
sd['quantize.param'] = torch.nn.Parameter(torch.randn(3))
sd['quantize.empty'] = torch.zeros(0, 4)
sd['loss.discriminator.main.0.weight'] = torch.randn(2, 3)
sd['loss.logvar'] = torch.zeros(())
sd._metadata = OrderedDict([('', {'version': 1}), ('encoder', {'version': 1})])  # as Module.state_dict() sets; pickled with BUILD

hparams = AttributeDict(lr=1e-4, ddconfig={'ch': 128, 'ch_mult': (1, 1, 2), 'dropout': 0.0}, use_ema=True,
                        lossconfig=LossConfig(disc_start=0, disc_weight=0.8), tags={'a', 'b'}, blob=b'\x00\xffraw')
lightning = {
    'epoch': 3,
    'global_step': 120,
    'pytorch-lightning_version': '2.1.0',
    'state_dict': sd,
    'optimizer_states': [{'state': {0: {'step': torch.tensor(3.0), 'exp_avg': torch.randn(2)}},
                          'param_groups': [{'lr': 1e-4, 'betas': (0.5, 0.9), 'eps': 1e-8, 'params': [0]}]}],
    'lr_schedulers': [],
    'hyper_parameters': hparams,
    'callbacks': {},
}
torch.save(lightning, os.path.join(out, 'lightning.ckpt'))

# LitEma: one buffer per trainable parameter, named without dots, plus decay and num_updates.
ema_sd = OrderedDict(sd)
ema_values = {}
for k, v in sd.items():
    if v.is_floating_point() and v.numel() > 0 and k != 'loss.logvar':
        e = (v.float() * 0.5 + 0.125).to(v.dtype)
        ema_sd['model_ema.' + k.replace('.', '')] = e
        ema_values[k] = e
ema_sd['model_ema.decay'] = torch.tensor(0.999)
ema_sd['model_ema.num_updates'] = torch.tensor(120, dtype=torch.int32)
torch.save({'epoch': 3, 'state_dict': ema_sd}, os.path.join(out, 'lightning_ema.ckpt'))

plain = OrderedDict((k, v) for k, v in sd.items() if not k.startswith('loss.'))
torch.save(plain, os.path.join(out, 'plain_state_dict.pt'))

# expected.safetensors, written by hand.
ST = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16', torch.float64: 'F64',
      torch.int64: 'I64', torch.int32: 'I32', torch.uint8: 'U8', torch.bool: 'BOOL'}


def raw_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


entries = [('raw.' + k, v) for k, v in sd.items()] + [('ema.' + k, v) for k, v in ema_values.items()]
header, blobs, off = {}, [], 0
for name, t in entries:
    b = raw_bytes(t)
    header[name] = {'dtype': ST[t.dtype], 'shape': list(t.shape), 'data_offsets': [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
header['__metadata__'] = {'epoch': '3', 'global_step': '120', 'lr': json.dumps(1e-4)}
hj = json.dumps(header).encode()
hj += b' ' * ((8 - len(hj) % 8) % 8)
with open(os.path.join(out, 'expected.safetensors'), 'wb') as f:
    f.write(struct.pack('<Q', len(hj)) + hj + b''.join(blobs))


def torch_like_zip(path, pkl):
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
        z.writestr('archive/data.pkl', pkl)
        z.writestr('archive/version', '3\n')


# Protocol 2, hand-written: PROTO 2, GLOBAL 'os system', MARK, BINUNICODE 'echo pwned', TUPLE, REDUCE, STOP.
cmd = b'echo pwned'
torch_like_zip(os.path.join(out, 'malicious_os_system.ckpt'),
               b'\x80\x02cos\nsystem\n(X' + struct.pack('<I', len(cmd)) + cmd + b'tR.')


class Evil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('echo pwned')",))


buf = io.BytesIO()
pickle.Pickler(buf, protocol=2).dump({'state_dict': OrderedDict([('a', 1.5), ('b', Evil())])})
torch_like_zip(os.path.join(out, 'malicious_reduce.ckpt'), buf.getvalue())
print('wrote', sorted(os.listdir(out)))


# Malformed archives: each pickle is valid, the tensor/storage description is not.
class StorageMarker:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class TensorMarker:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class MarkerPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageMarker):
            return ('storage', torch.FloatStorage, obj.key, 'cpu', obj.numel)
        return None


def bad_ckpt(name, tensor, entries):
    buf = io.BytesIO()
    MarkerPickler(buf, protocol=2).dump({'state_dict': OrderedDict([('w', tensor)])})
    with zipfile.ZipFile(os.path.join(out, name), 'w', zipfile.ZIP_STORED) as z:
        z.writestr('archive/data.pkl', buf.getvalue())
        for k, v in entries.items():
            z.writestr('archive/data/' + k, v)


four = struct.pack('<4f', 1.0, 2.0, 3.0, 4.0)
bad_ckpt('bad_view_out_of_range.ckpt', TensorMarker(StorageMarker('0', 4), 1, (2, 2), (2, 1)), {'0': four})
bad_ckpt('bad_storage_size.ckpt', TensorMarker(StorageMarker('0', 8), 0, (2, 2), (2, 1)), {'0': four})
bad_ckpt('bad_missing_storage.ckpt', TensorMarker(StorageMarker('7', 4), 0, (4,), (1,)), {'0': four})
bad_ckpt('bad_storage_key.ckpt', TensorMarker(StorageMarker('../0', 4), 0, (4,), (1,)), {'0': four})
bad_ckpt('good_handmade.ckpt', TensorMarker(StorageMarker('0', 4), 1, (3,), (1,)), {'0': four})
print('wrote malformed archives')
