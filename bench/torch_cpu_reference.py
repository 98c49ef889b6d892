#!/usr/bin/env python3
"""ablate's PRX training step in PyTorch eager on the CPU, f32, on a fixed number of threads.

A thin entry point over bench/torch_reference.py (the model, the flow-matching step, AdamW and
the timing loop all come from there, by import): this file only pins torch's intra-op thread
count, fixes the CPU settings (eager, fp32) and lets the shape be either one of ablate's
presets, a custom hidden x depth, or the shapes ablate itself printed (`--ablate-json`).
bench/cpu-vs-torch.sh runs it next to `ablate bench train --device cpu` on the same cores.

Usage:
  python3 bench/torch_cpu_reference.py --threads 2 --preset tiny --batch 32
  python3 bench/torch_cpu_reference.py --threads 2 --hidden 128 --depth 6 --image-tokens 64 --text-tokens 32 --batch 32
  python3 bench/torch_cpu_reference.py --threads 2 --ablate-json FILE   # shapes + batch from ablate's bench-json line
  python3 bench/torch_cpu_reference.py --hidden 256 --depth 8 --params-only

Prints one human-readable line and one machine-readable line `torch-cpu-json {...}` with
params, tokens, batch, step_ms and samples_per_s (and, with --ablate-json, ablate's parameter
count and whether it matches). Exits 3 on a parameter-count mismatch with ablate.
"""
import argparse
import json
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import torch_reference as ref  # noqa: E402


def ablate_shapes(path):
    """Model and data shapes from the first `bench-json` line of `ablate bench train --json`."""
    for line in open(path):
        if line.startswith("bench-json "):
            j = json.loads(line[len("bench-json "):])
            d = j["denoiser"]
            c = {k: d[k] for k in ("hidden", "depth", "heads", "mlp_ratio", "patch", "in_channels", "text_dim", "rope_theta", "time_embed_dim")}
            tx = j["text"]
            t = dict(vocab=tx["vocab"], max_len=tx["max_len"], width=tx["width"], layers=tx["layers"], heads=tx["heads"])
            return c, t, j["image_size"], j["image_tokens"], j
    raise SystemExit(f"{path}: no `bench-json` line (did ablate bench train run with --json?)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads(N)")
    ap.add_argument("--preset", default="tiny", help="ablate preset (tiny, mini, prx-small) when --hidden/--depth are not given")
    ap.add_argument("--hidden", type=int, help="custom width (overrides the preset)")
    ap.add_argument("--depth", type=int, help="custom number of blocks (overrides the preset)")
    ap.add_argument("--heads", type=int, help="attention heads (default: head dim 32, as in ablate's tiny)")
    ap.add_argument("--mlp-ratio", type=float, help="MLP width / hidden (default: the preset's, 3.5)")
    ap.add_argument("--image-tokens", type=int, default=64, help="a square number (64: ablate's default 32-pixel images)")
    ap.add_argument("--text-tokens", type=int, default=ref.TEXT["max_len"], help="text tokens (ablate's text.max_tokens)")
    ap.add_argument("--vocab", type=int, default=ref.DEFAULT_VOCAB)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--attn", choices=["sdpa", "math"], default="sdpa")
    ap.add_argument("--ablate-json", help="file with ablate's `bench-json` line: take shapes (and batch) from it, check the param count")
    ap.add_argument("--row", default="", help="label carried into the JSON line")
    ap.add_argument("--params-only", action="store_true", help="count parameters, run nothing")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)

    ablate = None
    if a.ablate_json:
        c, t, size, image_tokens, ablate = ablate_shapes(a.ablate_json)
        a.batch = ablate["batch"]
        preset = ablate["preset"]
    else:
        base = dict(ref.PRESETS[a.preset])
        if a.hidden:
            base["hidden"] = a.hidden
        if a.depth:
            base["depth"] = a.depth
        if a.mlp_ratio:
            base["mlp_ratio"] = a.mlp_ratio
        base["heads"] = a.heads or (base["heads"] if not a.hidden else max(1, base["hidden"] // 32))
        custom = a.hidden or a.depth or a.heads or a.mlp_ratio
        preset = f"{base['hidden']}x{base['depth']}" if custom else a.preset
        ref.PRESETS[preset] = base  # so torch_reference.denoiser_config sees the custom shape
        c, size = ref.denoiser_config(preset, a.image_tokens)
        t = dict(ref.TEXT, vocab=a.vocab, max_len=a.text_tokens)
        image_tokens = a.image_tokens

    with torch.device("meta"):  # count without allocating
        m = ref.Model(c, t)
    params = sum(p.numel() for p in m.parameters())
    denoiser_params = sum(p.numel() for p in m.denoiser.parameters())
    del m
    mismatch = ablate is not None and params != ablate["params"]
    shape = f"hidden {c['hidden']} depth {c['depth']} heads {c['heads']} mlp {c['mlp_ratio']}"
    if mismatch:
        print(f"PARAM MISMATCH: torch {params} vs ablate {ablate['params']} ({shape})", flush=True)
    out = dict(impl="torch-eager", row=a.row or preset, preset=preset, hidden=c["hidden"], depth=c["depth"], heads=c["heads"],
               mlp_ratio=c["mlp_ratio"], params=params, denoiser_params=denoiser_params, image_tokens=image_tokens,
               text_tokens=t["max_len"], batch=a.batch, threads=torch.get_num_threads(), torch=torch.__version__)
    if ablate is not None:
        out.update(ablate_params=ablate["params"], params_match=not mismatch)
    if a.params_only:
        print(f"{out['row']}: {shape}, {params} params, {image_tokens}+{t['max_len']} tokens")
        print("torch-cpu-json " + json.dumps(out), flush=True)
        sys.exit(3 if mismatch else 0)

    args = types.SimpleNamespace(device="cpu", mode="eager", compile_scope="blocks", precision="fp32", attn=a.attn,
                                 batch=a.batch, steps=a.steps, warmup=a.warmup, peak_tflops=0.0)
    r = ref.run(args, preset, c, t, size, image_tokens)
    out.update(step_ms=r["step_ms"], samples_per_s=r["samples_per_s"], steps=a.steps, warmup=a.warmup,
               warmup_s=r["warmup_s"], last_loss=r["last_loss"], attn=a.attn, precision="fp32")
    print(f"torch {torch.__version__} eager cpu, {torch.get_num_threads()} threads: {out['row']} ({shape}), {params} params, "
          f"{image_tokens}+{t['max_len']} tokens, batch {a.batch}: {r['step_ms']:.1f} ms/step, {r['samples_per_s']:.2f} samples/s "
          f"({a.steps} timed steps after {a.warmup} warm-up, loss {r['last_loss']:.4f})", flush=True)
    print("torch-cpu-json " + json.dumps(out), flush=True)
    sys.exit(3 if mismatch else 0)


if __name__ == "__main__":
    main()
