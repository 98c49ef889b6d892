#!/usr/bin/env python3
"""The PRX denoiser and training step of ablate, written in PyTorch, to measure ablate against.

Same model as trainer/src/model/{denoiser,block,layers,text,params}.rs and the same step as
trainer/src/train.rs + objective/flow.rs, as `ablate bench train` runs it:

* PRX block: only image tokens are queries; text tokens are projected to K/V only and
  concatenated after the image K/V; QK RMSNorm (and RMSNorm on the text keys); 2-axis
  interleaved RoPE on image q/k; adaLN-zero (one zero-initialised Linear(h -> 6h) per block);
  gated GELU-tanh MLP; no bias in attention and MLP linears; additive padding bias on text keys.
* Denoiser: patchify -> Linear -> blocks -> adaLN final layer (zero-init) -> unpatchify;
  sinusoidal timestep embedding (t * 1000, 256 features, cos then sin) -> Linear -> SiLU -> Linear.
* Learned text encoder (ablate's default): token + position embeddings, pre-LN transformer
  layers (LayerNorm eps 1e-5, biased Linears, GELU-tanh MLP x4), output LayerNorm. It runs in
  fp32 in ablate (its inputs are fp32 embeddings), so it runs outside autocast here too.
* Flow matching: x_t = (1 - t) x0 + t eps, target v = eps - x0, MSE; t logit-normal(0, 1) with
  10% uniform; pixel latents (ablate's `pixel`: patch 4 over RGB).
* AdamW (lr 1e-3, betas 0.9/0.95, eps 1e-15, no weight decay), global grad-norm clip 0.2.
* Precision: fp32 master weights and optimizer state; on CUDA bf16 autocast (matmuls in bf16,
  norms/softmax/RoPE statistics in fp32, fp32 residual stream), as ablate's `bf16_mixed`.

Attention uses F.scaled_dot_product_attention with the additive mask (what a PyTorch user
writes; `--attn math` spells out softmax(q k^T / sqrt(d) + bias) v as ablate does).

Usage:
  python bench/torch_reference.py --preset mini:64,prx-small:16 --image-tokens 256 --mode eager
  python bench/torch_reference.py --preset tiny --batch 4 --device cpu --steps 2   # CPU smoke test
  python bench/torch_reference.py --params-only                                    # param counts, no allocation
  python bench/torch_reference.py --check-ablate target/torch-parity.npz           # same numbers as ablate (fp32)
  python bench/torch_reference.py --ablate-json FILE ...   # take the shapes from `ablate bench train --json`

Prints a table row per preset and, with --json, a line `bench-json {...}` per preset.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# Presets of trainer/src/model/config.rs; in_channels/patch/text_dim are set from the latent
# ("pixel": 3 channels, patch 4) and the learned text encoder (width 128), as
# TrainConfig::denoiser() does.
PRESETS = {
    "tiny": dict(hidden=192, depth=8, heads=6, mlp_ratio=3.5),
    "mini": dict(hidden=640, depth=10, heads=10, mlp_ratio=3.5),
    "prx-small": dict(hidden=1792, depth=16, heads=28, mlp_ratio=3.5),
}
# ablate's defaults (config.rs TextSection, data/captions.rs Tokenizer::vocab_size()).
TEXT = dict(vocab=None, max_len=64, width=128, layers=2, heads=4)
DEFAULT_VOCAB = 564
NORM_EPS = 1e-6


def denoiser_config(preset, image_tokens):
    p = dict(PRESETS[preset])
    p.update(patch=4, in_channels=3, text_dim=TEXT["width"], rope_theta=10000.0, time_embed_dim=256)
    side = math.isqrt(image_tokens)
    assert side * side == image_tokens, "image tokens must be a square number"
    return p, side * p["patch"]


def linear(inp, out, bias, zero=False):
    lin = nn.Linear(inp, out, bias=bias)
    if zero:
        nn.init.zeros_(lin.weight)
        if bias:
            nn.init.zeros_(lin.bias)
    return lin


def rms_norm(x, w):
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + NORM_EPS) * w.float()
    return y.to(x.dtype)


def layer_norm(x, eps):
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def rope_tables(gh, gw, head_dim, theta, device):
    axis = head_dim // 2
    pairs = axis // 2
    i = torch.arange(pairs, dtype=torch.float64)
    freq = 1.0 / theta ** (2.0 * i / axis)
    rows = torch.arange(gh, dtype=torch.float64).repeat_interleave(gw)
    cols = torch.arange(gw, dtype=torch.float64).repeat(gh)
    ang = torch.cat([rows[:, None] * freq, cols[:, None] * freq], dim=1)  # (N, Dh/2)
    return ang.cos().float().to(device), ang.sin().float().to(device)


def apply_rope(x, cos, sin):
    b, h, n, dh = x.shape
    xf = x.float().reshape(b, h, n, dh // 2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    y = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return y.reshape(b, h, n, dh).to(x.dtype)


def attention(q, k, v, bias, mode):
    if mode == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    p = torch.softmax(scores.float() + bias, dim=-1)
    return p.to(v.dtype) @ v


def padding_bias(n_img, lens, n_txt, device):
    # 0 for image keys and real text tokens, -1e9 for text padding: (B, 1, 1, N + T)
    pos = torch.arange(n_txt, device=device)[None, :]
    pad = (pos >= lens[:, None]).float() * -1e9
    return torch.cat([torch.zeros(len(lens), n_img, device=device), pad], dim=1)[:, None, None, :]


class PrxBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, dh, m = c["hidden"], c["hidden"] // c["heads"], round(c["hidden"] * c["mlp_ratio"])
        self.heads = c["heads"]
        self.ada = linear(h, 6 * h, True, zero=True)
        self.qkv = linear(h, 3 * h, False)
        self.txt_kv = linear(h, 2 * h, False)
        self.q_norm = nn.Parameter(torch.ones(dh))
        self.k_norm = nn.Parameter(torch.ones(dh))
        self.txt_k_norm = nn.Parameter(torch.ones(dh))
        self.proj = linear(h, h, False)
        self.gate = linear(h, m, False)
        self.up = linear(h, m, False)
        self.down = linear(m, h, False)

    def forward(self, x, cond, txt, cos, sin, bias, attn):
        b, n, h = x.shape
        t = txt.shape[1]
        nh, dh = self.heads, h // self.heads
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).chunk(6, dim=1)
        hx = modulate(layer_norm(x, NORM_EPS), shift1, scale1)
        q, k, v = self.qkv(hx).reshape(b, n, 3, nh, dh).permute(2, 0, 3, 1, 4).unbind(0)
        q = apply_rope(rms_norm(q, self.q_norm), cos, sin)
        k = apply_rope(rms_norm(k, self.k_norm), cos, sin)
        tk, tv = self.txt_kv(txt).reshape(b, t, 2, nh, dh).permute(2, 0, 3, 1, 4).unbind(0)
        tk = rms_norm(tk, self.txt_k_norm)
        k = torch.cat([k, tk.to(k.dtype)], dim=2)
        v = torch.cat([v, tv.to(v.dtype)], dim=2)
        a = attention(q, k, v, bias, attn).transpose(1, 2).reshape(b, n, h)
        x = x + (self.proj(a) * gate1.unsqueeze(1)).float()
        hx = modulate(layer_norm(x, NORM_EPS), shift2, scale2)
        y = self.down(F.gelu(self.gate(hx), approximate="tanh") * self.up(hx)) * gate2.unsqueeze(1)
        return x + y.float()


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=t.device) / half).float()
    args = (t.float() * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([args.cos(), args.sin()], dim=1)


class Denoiser(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        h, pd = c["hidden"], c["in_channels"] * c["patch"] ** 2
        self.patch_in = linear(pd, h, True)
        self.txt_in = linear(c["text_dim"], h, True)
        self.time_fc1 = linear(c["time_embed_dim"], h, True)
        self.time_fc2 = linear(h, h, True)
        self.blocks = nn.ModuleList(PrxBlock(c) for _ in range(c["depth"]))
        self.final_ada = linear(h, 2 * h, True, zero=True)
        self.final_out = linear(h, pd, True, zero=True)

    def forward(self, x, t, txt, lens, attn="sdpa"):
        b, ch, hh, ww = x.shape
        p = self.c["patch"]
        gh, gw = hh // p, ww // p
        tokens = x.reshape(b, ch, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, p * p * ch)
        h = self.patch_in(tokens).float()
        txt = self.txt_in(txt)
        cond = self.time_fc2(F.silu(self.time_fc1(timestep_embedding(t, self.c["time_embed_dim"]))))
        cond_act = F.silu(cond)
        cos, sin = rope_tables(gh, gw, self.c["hidden"] // self.c["heads"], self.c["rope_theta"], x.device)
        bias = padding_bias(gh * gw, lens, txt.shape[1], x.device)
        for blk in self.blocks:
            h = blk(h, cond_act, txt, cos, sin, bias, attn)
        shift, scale = self.final_ada(cond_act).chunk(2, dim=1)
        out = self.final_out(modulate(layer_norm(h, NORM_EPS), shift, scale)).float()
        return out.reshape(b, gh, gw, p, p, ch).permute(0, 5, 1, 3, 2, 4).reshape(b, ch, hh, ww)


class TextEncoder(nn.Module):
    def __init__(self, t):
        super().__init__()
        w = t["width"]
        self.t = t
        self.tok_emb = nn.Parameter(torch.randn(t["vocab"], w) * 0.02)
        self.pos_emb = nn.Parameter(torch.randn(t["max_len"], w) * 0.02)
        self.layers = nn.ModuleList()
        for _ in range(t["layers"]):
            self.layers.append(nn.ModuleDict(dict(
                ln1=nn.LayerNorm(w, eps=1e-5), qkv=linear(w, 3 * w, True), proj=linear(w, w, True),
                ln2=nn.LayerNorm(w, eps=1e-5), fc1=linear(w, 4 * w, True), fc2=linear(4 * w, w, True))))
        self.ln_out = nn.LayerNorm(w, eps=1e-5)

    def forward(self, ids, lens, attn="sdpa"):
        b, t = ids.shape
        w, nh = self.t["width"], self.t["heads"]
        x = self.tok_emb[ids] + self.pos_emb[:t][None]
        bias = padding_bias(0, lens, t, ids.device)
        for l in self.layers:
            qkv = l["qkv"](l["ln1"](x)).reshape(b, t, 3, nh, w // nh).permute(2, 0, 3, 1, 4)
            a = attention(qkv[0], qkv[1], qkv[2], bias, attn).transpose(1, 2).reshape(b, t, w)
            x = x + l["proj"](a)
            x = x + l["fc2"](F.gelu(l["fc1"](l["ln2"](x)), approximate="tanh"))
        return self.ln_out(x)


class Model(nn.Module):
    """Text encoder + denoiser, as one set of trainable parameters (ablate's VarMap)."""

    def __init__(self, c, t):
        super().__init__()
        self.text = TextEncoder(t)
        self.denoiser = Denoiser(c)


def train_flops(c, t, batch, image_tokens):
    """3x the forward matmul FLOPs; the same formula as DenoiserConfig::forward_flops and
    TextEncoderConfig::forward_flops in ablate."""
    h, m = c["hidden"], round(c["hidden"] * c["mlp_ratio"])
    pd, n, tt = c["in_channels"] * c["patch"] ** 2, image_tokens, t["max_len"]
    block = (2 * h * 6 * h + 2 * n * h * 3 * h + 2 * tt * h * 2 * h + 2 * 2 * n * (n + tt) * h
             + 2 * n * h * h + 2 * n * h * m * 3)
    embed = 2 * n * pd * h + 2 * tt * c["text_dim"] * h + 2 * (c["time_embed_dim"] * h + h * h)
    fin = 2 * h * 2 * h + 2 * n * h * pd
    w = t["width"]
    text = t["layers"] * (2 * tt * w * 12 * w + 2 * 2 * tt * tt * w)
    return 3.0 * batch * (c["depth"] * block + embed + fin + text)


def count_params(c, t):
    with torch.device("meta"):
        m = Model(c, t)
    return sum(p.numel() for p in m.parameters())


def make_batch(batch, size, t, vocab, gen):
    images = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    lens = torch.randint(4, t["max_len"] // 2, (batch,), generator=gen)
    ids = torch.randint(1, vocab, (batch, t["max_len"]), generator=gen)
    ids = torch.where(torch.arange(t["max_len"])[None] < lens[:, None], ids, torch.zeros_like(ids))
    return images, ids, lens


def sample_t(batch, gen, device):
    # logit-normal(0, 1), 10% uniform in [1e-3, 1] (objective/flow.rs TimestepConfig)
    z = torch.sigmoid(torch.randn(batch, generator=gen))
    u = 1e-3 + (1 - 1e-3) * torch.rand(batch, generator=gen)
    return torch.where(torch.rand(batch, generator=gen) < 0.1, u, z).to(device)


def run(args, preset, c, t, size, image_tokens):
    dev = torch.device(args.device)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    with torch.device(dev):  # initialise on the device (fast for 1B parameters)
        model = Model(c, t)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-15, weight_decay=0.0)
    autocast = dev.type == "cuda" and args.precision == "bf16_mixed"
    denoise = model.denoiser
    if args.mode == "compile" and args.compile_scope == "model":
        denoise = torch.compile(model.denoiser)
    elif args.mode == "compile":
        # regional compilation (PyTorch's recipe for repeated blocks): each block is compiled,
        # and identical blocks share the compiled code, so cold start stays short
        for blk in model.denoiser.blocks:
            blk.compile()

    def step(images, ids, lens):
        images, ids, lens = images.to(dev, non_blocking=True), ids.to(dev, non_blocking=True), lens.to(dev, non_blocking=True)
        eps = torch.randn(images.shape, device=dev)
        tt = sample_t(images.shape[0], gen, dev)
        tb = tt[:, None, None, None]
        xt = (1 - tb) * images + tb * eps
        txt = model.text(ids, lens, args.attn)  # fp32, as in ablate
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=autocast):
            pred = denoise(xt, tt, txt, lens, args.attn)
        loss = (pred.float() - (eps - images)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.2)
        opt.step()
        return loss

    batches = [make_batch(args.batch, size, t, t["vocab"], gen) for _ in range(args.warmup + args.steps)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for b in batches[: args.warmup]:
        loss = step(*b)
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches[args.warmup:]:
        loss = step(*b)
    sync()
    ms = (time.perf_counter() - t0) * 1000 / max(args.steps, 1)
    flops = train_flops(c, t, args.batch, image_tokens)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    mfu = flops / (ms / 1000) / (args.peak_tflops * 1e12) if dev.type == "cuda" else None
    return dict(impl=f"torch-{args.mode}", preset=preset, device=describe(dev), batch=args.batch,
                image_tokens=image_tokens, text_tokens=t["max_len"], image_size=size, precision=args.precision,
                attn=args.attn, params=params, step_ms=ms, samples_per_s=args.batch / (ms / 1000),
                train_flops_per_step=flops, mfu=mfu, peak_tflops=args.peak_tflops, peak_mem_bytes=peak,
                warmup_s=warm_s, last_loss=float(loss.detach()), torch=torch.__version__)


def torch_name(rust_name):
    """ablate's parameter name (trainer/src/model) -> this file's module path."""
    n = rust_name.replace("denoiser.time.fc", "denoiser.time_fc").replace(".attn.", ".").replace(".mlp.", ".")
    n = n.replace("denoiser.final.", "denoiser.final_")
    for norm in ("q_norm", "k_norm", "txt_k_norm"):
        n = n.replace(f".{norm}.weight", f".{norm}")
    return n


def check_ablate(path):
    """Loads the weights and inputs ablate wrote (trainer/tests/torch_parity.rs) and checks this
    model reproduces ablate's text features and prediction in fp32."""
    import numpy as np
    z = np.load(path)
    params = {k[len("param."):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("param.")}
    c, _ = denoiser_config("tiny", 64)
    t = dict(TEXT, vocab=params["text.tok_emb"].shape[0])
    model = Model(c, t)
    model.load_state_dict({torch_name(k): v for k, v in params.items()}, strict=True)
    ids, lens = torch.from_numpy(z["in.ids"].astype(np.int64)), torch.from_numpy(z["in.lens"].astype(np.int64))
    xt, tt = torch.from_numpy(z["in.xt"]), torch.from_numpy(z["in.t"])
    ok = True
    with torch.no_grad():
        for attn in ("math", "sdpa"):
            txt = model.text(ids, lens, attn)
            pred = model.denoiser(xt, tt, txt, lens, attn)
            for name, got, want in (("text features", txt, z["out.txt"]), ("prediction", pred, z["out.pred"])):
                want = torch.from_numpy(want)
                err = ((got - want).abs().max() / want.abs().max()).item()
                good = err < 1e-4
                ok &= good
                print(f"{'PASS' if good else 'FAIL'} {name} ({attn}): max |torch - ablate| / max |ablate| = {err:.2e} "
                      f"over {want.numel()} values (|ablate| up to {want.abs().max().item():.3f})")
    print(f"{len(params)} parameter tensors, {sum(v.numel() for v in params.values())} values loaded by name")
    return ok


def describe(dev):
    if dev.type == "cuda":
        return f"cuda:{dev.index or 0} {torch.cuda.get_device_name(dev)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="mini", help="comma-separated presets (tiny, mini, prx-small), each optionally :BATCH")
    ap.add_argument("--image-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--compile-scope", choices=["blocks", "model"], default="blocks", help="what --mode compile compiles")
    ap.add_argument("--attn", choices=["sdpa", "math"], default="sdpa")
    ap.add_argument("--precision", choices=["bf16_mixed", "fp32"], default="bf16_mixed")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--vocab", type=int, default=DEFAULT_VOCAB, help="text vocabulary (ablate's Tokenizer)")
    ap.add_argument("--ablate-json", help="file with ablate's `bench-json` lines: take shapes from them and check param counts")
    ap.add_argument("--params-only", action="store_true", help="print parameter counts (meta tensors, nothing allocated)")
    ap.add_argument("--json", action="store_true", help="also print `bench-json {...}` lines")
    ap.add_argument("--check-ablate", metavar="NPZ", help="check this model against ablate's (trainer/tests/torch_parity.rs) and exit")
    args = ap.parse_args()
    if args.check_ablate:
        sys.exit(0 if check_ablate(args.check_ablate) else 1)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 matmuls as in ablate (no TF32)

    ablate = {}
    if args.ablate_json:
        for line in open(args.ablate_json):
            if line.startswith("bench-json "):
                j = json.loads(line[len("bench-json "):])
                ablate[j["preset"]] = j

    print(f"torch {torch.__version__}  device {describe(torch.device(args.device))}  mode {args.mode}  attn {args.attn}  "
          f"batch {args.batch}  ({args.steps} timed steps after {args.warmup} warm-up)", flush=True)
    print(f"{'preset':<10} {'batch':>5} {'params':>13} {'tokens':>7} {'step ms':>10} {'samples/s':>11} {'TFLOP/step':>12} {'MFU %':>7} {'peak GiB':>9}")
    failed = False
    default_batch = args.batch
    for spec in args.preset.split(","):
        preset, _, b = spec.partition(":")
        args.batch = int(b) if b else default_batch
        t = dict(TEXT, vocab=args.vocab)
        c, size = denoiser_config(preset, args.image_tokens)
        image_tokens = args.image_tokens
        if preset in ablate:
            j = ablate[preset]
            d = j["denoiser"]
            c = {k: d[k] for k in ("hidden", "depth", "heads", "mlp_ratio", "patch", "in_channels", "text_dim", "rope_theta", "time_embed_dim")}
            t = dict(vocab=j["text"]["vocab"], max_len=j["text"]["max_len"], width=j["text"]["width"],
                     layers=j["text"]["layers"], heads=j["text"]["heads"])
            size, image_tokens = j["image_size"], j["image_tokens"]
        n = count_params(c, t)
        if preset in ablate and n != ablate[preset]["params"]:
            print(f"PARAM MISMATCH {preset}: torch {n} vs ablate {ablate[preset]['params']}")
            failed = True
        if args.params_only:
            print(f"{preset:<10} {'':>5} {n:>13} {image_tokens:>7}")
            continue
        try:
            r = run(args, preset, c, t, size, image_tokens)
        except torch.cuda.OutOfMemoryError as e:
            print(f"{preset:<10} out of memory at batch {args.batch}: {str(e).splitlines()[0]}", flush=True)
            failed = True
            torch.cuda.empty_cache()
            continue
        gib = "-" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**30:.2f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}"
        print(f"{preset:<10} {args.batch:>5} {r['params']:>13} {image_tokens:>7} {r['step_ms']:>10.1f} {r['samples_per_s']:>11.2f} "
              f"{r['train_flops_per_step'] / 1e12:>12.2f} {mfu:>7} {gib:>9}   (warm-up {r['warmup_s']:.1f} s, loss {r['last_loss']:.4f})", flush=True)
        if args.json:
            print("bench-json " + json.dumps(r), flush=True)
        del r
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
