"""Torch timings for the `tokenizer` suite: the MergeVQ G+R d64 tokenizer at 256 px, fp32 CPU.

The network is rebuilt here in plain torch 1.13 (the reference needs timm/einops, which are not
installed): CNN encoder with ResBlocks and stride-2 downsamples, cls + 12 ToMe blocks with
proportional attention and bipartite soft matching (256 -> 144 tokens, class token protected,
source traced as a dense [B, 1+N, 1+L] matrix merged with amax), GN+SiLU+1x1 head to 18 channels,
the 'layer3' dist_head on the cls token, LFQ sign quantization with indices; then unmerge with the
true source and the MergeVQ decoder (conv_in, DWConv positional encoding + 12 blocks with MixMlp,
AdaptiveGroupNorm per level, ResBlocks, depth-to-space upsamplers, GN+SiLU+conv_out).
Parameter shapes follow the reference state_dict; weights are random (torch.manual_seed).

argv[1]: JSON {"batch": [1, 8], "reps": 3, "budget_s": 20}, optional "warmup" (1), "min_reps"
(3, batch 1 only) and "schedule" (the per-block merge counts; computed by default).

For every batch: `warmup` runs, then encode (image -> indices + source) and decode (codes + source
-> image) are timed separately; batch 1 gets at least `min_reps` repeats, and every batch stops
after `budget_s` seconds once it has its minimum (larger batches need one repeat).
Prints one JSON line: {"encode": {"1": ms, ...}, "decode": {...}, "reps": {"1": [n_enc, n_dec]},
"load1": {"1": 1-minute load average after the batch}, "schedule": [...], "threads": n}.
Output shapes go to stderr.
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '2')))

# ---- configuration: configs/gpu_s1/imagenet_mergevq_256_GR_d64_8gpu_200ep.yaml (ddconfig keys) ----
GR_D64 = dict(ch=64, ch_mult=[1, 1, 2, 4, 8], num_res_blocks=4, num_att_blocks=12, num_heads=8,
              resolution=256, in_channels=3, out_ch=3, z_channels=18, merge_num=112, num_classes=768,
              num_res_extra=1)


# ---- merge schedule (docs/model.md, "Merge schedules") ----
def parse_r(n, r, inflect, total=None):
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    step = (hi - lo) / (n - 1)
    rs = [int(lo + step * i) for i in range(n)]
    if total is not None:
        rem = total - sum(rs)
        if rem:
            rs[0 if inflect < 0 else -1] += rem
    return rs


def check_parse_r(n, merge_num, inflect):
    gap, best = 1e10, 0
    for i in range(merge_num):
        g = abs(sum(parse_r(n, i, inflect)) - merge_num)
        if g < gap:
            best, gap = i, g
        elif g > gap:
            break
    return best


def merge_schedule(n, merge_num):
    return parse_r(n, check_parse_r(n, merge_num, -0.5), -0.5, merge_num)


# ---- layers ----
class ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.nin_shortcut(x) if self.nin_shortcut is not None else x)


class LayerScale(nn.Module):
    def __init__(self, dim, init=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    """qkv with bias; optional per-key additive bias (ToMe's log size); returns the head-mean keys."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, key_bias=None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4).unbind(0)
        s = (q @ k.transpose(-2, -1)) * (self.hd ** -0.5)
        if key_bias is not None:
            s = s + key_bias[:, None, None, :]
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(o), k.mean(1)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class MixMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        h = self.fc1(x)
        B, N, C = h.shape
        s = int(round(N ** 0.5))
        h = self.dwconv(h.transpose(1, 2).reshape(B, C, s, s)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(h))


class Block(nn.Module):
    def __init__(self, dim, heads, mix=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = (MixMlp if mix else Mlp)(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        a, _ = self.attn(self.norm1(x))
        x = x + self.ls1(a)
        return x + self.ls2(self.mlp(self.norm2(x)))


# ---- ToMe (docs/model.md, "Token merging (ToMe)") ----
def bipartite_match(metric, r):
    """Class-token bipartite soft matching: (unm_idx [B,Na-r], src_idx [B,r], dst_idx [B,r]) or None."""
    N = metric.shape[1]
    r = min(r, (N - 1) // 2)
    if r <= 0:
        return None
    m = metric / metric.norm(dim=-1, keepdim=True)
    scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)
    scores[:, 0, :] = -math.inf
    best, dst_all = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    unm = order[:, r:].sort(dim=1)[0]
    src = order[:, :r]
    return unm, src, dst_all.gather(1, src)


def merge_tokens(x, idx, reduce):
    """[B, N, c] -> [B, N - r, c]: output [unmerged A rows..., all Bset rows...]."""
    unm, src, dst = idx
    a, b = x[:, ::2], x[:, 1::2]
    c = x.shape[-1]
    kept = a.gather(1, unm[..., None].expand(-1, -1, c))
    moved = a.gather(1, src[..., None].expand(-1, -1, c))
    b = b.scatter_reduce(1, dst[..., None].expand(-1, -1, c), moved, reduce=reduce)
    return torch.cat([kept, b], dim=1)


class ToMeBlock(Block):
    def forward_tome(self, x, r, state):
        size, source = state
        a, metric = self.attn(self.norm1(x), None if size is None else size.log()[..., 0])
        x = x + self.ls1(a)
        if r > 0:
            idx = bipartite_match(metric, r)
            if idx is not None:
                B, N, _ = x.shape
                if source is None:
                    source = torch.eye(N)[None].expand(B, N, N)
                source = merge_tokens(source, idx, 'amax')
                if size is None:
                    size = torch.ones(B, N, 1)
                x = merge_tokens(x * size, idx, 'sum')
                size = merge_tokens(size, idx, 'sum')
                x = x / size
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x, (size, source)


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        CH, CH_MULT, NUM_RES = cfg['ch'], tuple(cfg['ch_mult']), cfg['num_res_blocks']
        n = len(CH_MULT)
        in_mult = (1,) + CH_MULT
        self.conv_in = nn.Conv2d(cfg['in_channels'], CH, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        for i in range(n):
            lvl = nn.Module()
            c, out = CH * in_mult[i], CH * CH_MULT[i]
            blocks = []
            for _ in range(NUM_RES):
                blocks.append(ResBlock(c, out))
                c = out
            lvl.block = nn.ModuleList(blocks)
            if i < n - 1:
                lvl.downsample = nn.Conv2d(out, out, 3, stride=2, padding=1)
            self.down.append(lvl)
        C = CH * CH_MULT[-1]
        self.attn = nn.Module()
        self.attn.cls_token = nn.Parameter(torch.randn(1, 1, C) * 1e-6)
        self.attn.blocks = nn.ModuleList([ToMeBlock(C, cfg['num_heads']) for _ in range(cfg['num_att_blocks'])])
        self.norm_out = nn.GroupNorm(32, C, eps=1e-6)
        self.conv_out = nn.Conv2d(C, cfg['z_channels'], 1)
        self.dist_head = nn.Sequential(  # 'layer3'
            nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, 4 * C), nn.GELU(),
            nn.Linear(4 * C, cfg['num_classes'] or C))

    def forward(self, img, schedule):
        x = self.conv_in(img)
        for lvl in self.down:
            for b in lvl.block:
                x = b(x)
            if hasattr(lvl, 'downsample'):
                x = lvl.downsample(x)
        B, C, H, W = x.shape
        x = torch.cat([self.attn.cls_token.expand(B, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        state = (None, None)
        for blk, r in zip(self.attn.blocks, schedule):
            x, state = blk.forward_tome(x, r, state)
        K = x.shape[1] - 1
        s = int(round(K ** 0.5))
        z = x[:, 1:].transpose(1, 2).reshape(B, C, s, s)
        z = self.conv_out(F.silu(self.norm_out(z)))
        head = self.dist_head(x[:, 0])
        return z, state[1], head


def lfq(z):
    """Sign quantization: codes (+1/-1) and indices (bit j = channel j, LSB first), [B, K]."""
    bits = (z > 0)
    codes = torch.where(bits, 1.0, -1.0)
    weights = (2 ** torch.arange(z.shape[1], dtype=torch.int64)).view(1, -1, 1, 1)
    idx = (bits.long() * weights).sum(1).flatten(1)
    return codes, idx


def unmerge(codes, source):
    """Restore the full grid: codes [B, d, s, s] (ToMe order), dense source [B, 1+K, 1+L]."""
    B, d = codes.shape[:2]
    kept = codes.flatten(2).transpose(1, 2)  # [B, K, d]
    S = source[:, 1:, 1:]
    L = S.shape[-1]
    full = torch.zeros(B, L, d)
    nz = (S == 1).nonzero(as_tuple=False)
    full[nz[:, 0], nz[:, 2]] = kept[nz[:, 0], nz[:, 1]]
    h = int(round(L ** 0.5))
    return full.transpose(1, 2).reshape(B, d, h, h)


class AdaptiveGroupNorm(nn.Module):
    def __init__(self, zc, c):
        super().__init__()
        self.gn = nn.GroupNorm(32, c, eps=1e-6, affine=False)
        self.gamma, self.beta = nn.Linear(zc, c), nn.Linear(zc, c)

    def forward(self, x, style):
        B, C = x.shape[:2]
        st = style.flatten(2)
        scale = self.gamma((st.var(dim=-1) + 1e-6).sqrt()).view(B, C, 1, 1)
        bias = self.beta(st.mean(dim=-1)).view(B, C, 1, 1)
        return self.gn(x) * scale + bias


class Upsampler(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 4 * c, 3, padding=1)

    def forward(self, x):
        y = self.conv1(x)
        B, C4, H, W = y.shape
        C = C4 // 4
        return y.view(B, 2, 2, C, H, W).permute(0, 3, 4, 1, 5, 2).reshape(B, C, 2 * H, 2 * W)


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        CH, CH_MULT, NUM_RES, Z_CH = cfg['ch'], tuple(cfg['ch_mult']), cfg['num_res_blocks'], cfg['z_channels']
        n = len(CH_MULT)
        counts = [NUM_RES + (0 if i == 0 else cfg.get('num_res_extra', 1)) for i in range(n)]
        c = CH * CH_MULT[-1]
        self.conv_in = nn.Conv2d(Z_CH, c, 3, padding=1)
        self.attn = nn.Module()
        self.attn.pos_embed = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.attn.blocks = nn.ModuleList([Block(c, cfg['num_heads'], mix=True) for _ in range(cfg['num_att_blocks'])])
        adaptive, up = [None] * n, [None] * n
        for i in reversed(range(n)):
            out = CH * CH_MULT[i]
            adaptive[i] = AdaptiveGroupNorm(Z_CH, c)
            lvl = nn.Module()
            blocks = []
            for _ in range(counts[i]):
                blocks.append(ResBlock(c, out))
                c = out
            lvl.block = nn.ModuleList(blocks)
            if i > 0:
                lvl.upsample = Upsampler(c)
            up[i] = lvl
        self.adaptive, self.up = nn.ModuleList(adaptive), nn.ModuleList(up)
        self.norm_out = nn.GroupNorm(32, c, eps=1e-6)
        self.conv_out = nn.Conv2d(c, cfg['out_ch'], 3, padding=1)

    def forward(self, z):
        style = z
        x = self.conv_in(z)
        B, C, H, W = x.shape
        x = x + self.attn.pos_embed(x)
        t = x.flatten(2).transpose(1, 2)
        for b in self.attn.blocks:
            t = b(t)
        x = t.transpose(1, 2).reshape(B, C, H, W)
        for i in reversed(range(len(self.up))):
            x = self.adaptive[i](x, style)
            for b in self.up[i].block:
                x = b(x)
            if i > 0:
                x = self.up[i].upsample(x)
        return self.conv_out(F.silu(self.norm_out(x)))


def init_weights(m):
    for mod in m.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(mod.weight, std=0.02)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


def smooth_image(B, R):
    """Smooth synthetic RGB in [-1, 1] (gradients and a disc), varied per sample."""
    y, x = torch.meshgrid(torch.linspace(0, 1, R), torch.linspace(0, 1, R), indexing='ij')
    out = []
    for b in range(B):
        ph = 0.7 * b
        r = torch.sin(2 * math.pi * (x + ph)) * 0.5
        g = (y - 0.5) * 1.6
        disc = (((x - 0.4 - 0.05 * b) ** 2 + (y - 0.55) ** 2) < 0.06).float()
        bl = 0.8 * disc - 0.4 + 0.3 * torch.cos(2 * math.pi * x * y)
        out.append(torch.stack([r, g, bl]).clamp(-1, 1))
    return torch.stack(out)


def timed(fn, reps, budget, min_reps, warmup):
    for _ in range(warmup):
        fn()
    ts = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget and len(ts) >= min_reps:
            break
    ts.sort()
    m = len(ts) // 2
    return (ts[m] if len(ts) % 2 else (ts[m - 1] + ts[m]) / 2), len(ts)


def main():
    args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    batches = args.get('batch', [1, 8])
    reps = int(args.get('reps', 3))
    budget = float(args.get('budget_s', 20))
    warmup = int(args.get('warmup', 1))
    cfg = GR_D64
    RES, Z_CH = cfg['resolution'], cfg['z_channels']
    L = (RES // 2 ** (len(cfg['ch_mult']) - 1)) ** 2
    K = L - cfg['merge_num']
    schedule = args.get('schedule') or merge_schedule(cfg['num_att_blocks'], cfg['merge_num'])
    assert sum(schedule) == cfg['merge_num'], schedule
    torch.manual_seed(0)
    enc, dec = Encoder(cfg).eval(), Decoder(cfg).eval()
    init_weights(enc.attn)
    init_weights(dec.attn)
    n_enc = sum(p.numel() for p in enc.parameters())
    n_dec = sum(p.numel() for p in dec.parameters())
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; schedule {schedule}; '
          f'params encoder {n_enc / 1e6:.1f}M decoder {n_dec / 1e6:.1f}M', file=sys.stderr)
    out = {'encode': {}, 'decode': {}, 'reps': {}, 'load1': {}, 'schedule': schedule,
           'threads': torch.get_num_threads()}
    with torch.no_grad():
        for B in batches:
            img = smooth_image(B, RES)
            res = {}

            def encode():
                z, source, head = enc(img, schedule)
                codes, idx = lfq(z)
                res.update(z=z, codes=codes, idx=idx, source=source, head=head)

            def decode():
                res['img'] = dec(unmerge(res['codes'], res['source']))

            min_reps = int(args.get('min_reps', min(reps, 3))) if B == 1 else 1
            ms_e, n_e = timed(encode, reps, budget, min_reps, warmup)
            ms_d, n_d = timed(decode, reps, budget, min_reps, warmup)
            print(f'B={B}: z {list(res["z"].shape)} indices {list(res["idx"].shape)} source '
                  f'{list(res["source"].shape)} head {list(res["head"].shape)} decode {list(res["img"].shape)}; '
                  f'encode {ms_e:.1f} ms ({n_e} reps), decode {ms_d:.1f} ms ({n_d} reps)', file=sys.stderr)
            s = int(round(K ** 0.5))
            assert list(res['z'].shape) == [B, Z_CH, s, s] and list(res['img'].shape) == [B, 3, RES, RES]
            assert list(res['source'].shape) == [B, 1 + K, 1 + L]
            out['encode'][str(B)] = ms_e
            out['decode'][str(B)] = ms_d
            out['reps'][str(B)] = [n_e, n_d]
            out['load1'][str(B)] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == '__main__':
    main()
