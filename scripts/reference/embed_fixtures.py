"""Parity fixtures for the Rust ports of the CLIP and DINOv2 image embedders (+ bicubic, CMMD).

Writes trainer/tests/fixtures/embed/{clip_names.txt, dino_names.txt, parity.json}.

Networks: the real Hugging Face classes with tiny configs, built from the
config only (no from_pretrained; outbound sockets are disabled as a guard):
    CLIP:   CLIPVisionModelWithProjection(CLIPVisionConfig(CLIP_CFG)), output image_embeds
    DINOv2: Dinov2Model(Dinov2Config(DINO_CFG)), output pooler_output (layernormed CLS)
Both in eval mode with attn_implementation="eager"; calls of each module's
eager_attention_forward are counted to confirm that path ran.

Weights: every state_dict() entry gets a float64 value by the first rule that
matches (n = name, v = sym(n, i), u = unit(n, i), i = row-major flat index),
then is rounded to float32 (numpy astype) and loaded with strict=True:
    n contains position_embedding / class_embedding / cls_token / mask_token: 0.5 * v
    n ends with "lambda1" (DINOv2 layer scale):    0.1 + 0.9 * u
    1-D, n ends with ".weight" (LayerNorm):        1.0 + 0.1 * v
    1-D, n ends with ".bias":                      0.05 * v
    >= 2-D (linear / conv):                        v * sqrt(3.0 / prod(shape[1:]))
    anything else (integer buffers): left as constructed, listed as not-assigned
The float64 run is model.double() of the float32 model (identical weights).

Inputs: images x = float32(unit("embed/input", i)), shape [2,3,20,24] (NCHW).
Per network: F.interpolate(x, size=(S,S), mode="bicubic", align_corners=False)
(no antialias, no clamp), then (x - mean[c]) / std[c]; S = 42 (CLIP), 56 (DINOv2).
The float32 run does this in float32, the float64 run on x.double().
DINOv2's position grid is 5x5 (image_size 70), so at 56 px (4x4 patches) HF
interpolates the position embeddings bicubically.
Two steps of HF's float64 run are float32 on purpose: CLIP's eager attention
takes the softmax in float32, and DINOv2 interpolates the position grid in
float32. embeds_f64 keeps HF's behaviour; embeds_f64_all_f64 is the same run
with those two steps replaced by float64 versions (written here).

Also: a standalone bicubic case (input sym("embed/bicubic", i), [1,2,7,9], float64)
and the CMMD estimator (biased MMD^2 with a Gaussian RBF kernel, sigma 10, x1000).

Usage: python3 scripts/reference/embed_fixtures.py [--outdir DIR]
"""

import argparse
import copy
import json
import math
import os
import socket
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detvalues  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUTDIR = os.path.join(REPO, "trainer", "tests", "fixtures", "embed")

CLIP_CFG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                image_size=42, patch_size=14, projection_dim=32, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, num_channels=3)
DINO_CFG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4, image_size=70,
                patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True,
                use_swiglu_ffn=False, layerscale_value=1.0, num_channels=3)
NETS = {
    "clip": dict(cfg=CLIP_CFG, size=42, output="image_embeds",
                 mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711]),
    "dino": dict(cfg=DINO_CFG, size=56, output="pooler_output",
                 mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
}
INPUT_SHAPE = (2, 3, 20, 24)
BICUBIC_SHAPE, BICUBIC_SIZES = (1, 2, 7, 9), [(5, 13), (16, 4), (7, 9)]
MMD_SIGMA, MMD_SCALE = 10.0, 1000.0
RULES = [
    "contains position_embedding|class_embedding|cls_token|mask_token: 0.5*sym",
    "ends with lambda1: 0.1 + 0.9*unit",
    "1-D ending .weight: 1.0 + 0.1*sym",
    "1-D ending .bias: 0.05*sym",
    ">=2-D: sym * sqrt(3.0 / prod(shape[1:]))",
    "else: not assigned (left as constructed)",
]


def _no_network(*_a, **_k):
    raise RuntimeError("network access is disabled in embed_fixtures.py")


def weight_value(name, shape):
    """float64 formula value for one state-dict entry, or None if no rule applies."""
    if any(k in name for k in ("position_embedding", "class_embedding", "cls_token", "mask_token")):
        return 0.5 * detvalues.sym(name, shape)
    if name.endswith("lambda1"):
        return 0.1 + 0.9 * detvalues.unit(name, shape)
    if len(shape) == 1 and name.endswith(".weight"):
        return 1.0 + 0.1 * detvalues.sym(name, shape)
    if len(shape) == 1 and name.endswith(".bias"):
        return 0.05 * detvalues.sym(name, shape)
    if len(shape) >= 2:
        return detvalues.sym(name, shape) * math.sqrt(3.0 / math.prod(shape[1:]))
    return None


def build(key):
    """Tiny HF model with deterministic float32 weights; returns (model, [(name, shape|None)])."""
    import transformers as tf
    if key == "clip":
        model = tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**CLIP_CFG, attn_implementation="eager"))
    else:
        model = tf.Dinov2Model(tf.Dinov2Config(**DINO_CFG, attn_implementation="eager"))
    model.eval()
    sd, expected, names = model.state_dict(), {}, []
    for name, t in sd.items():
        shape = tuple(t.shape)
        val = weight_value(name, shape) if t.is_floating_point() else None
        names.append((name, shape if val is not None else None))
        if val is not None:
            expected[name] = torch.from_numpy(np.ascontiguousarray(val.astype(np.float32)))
            sd[name] = expected[name]
    model.load_state_dict(sd, strict=True)
    for name, t in model.state_dict().items():
        if name in expected:
            assert t.dtype == torch.float32 and torch.equal(t, expected[name]), name
    return model, names


def count_eager_calls():
    """Wrap each module's eager_attention_forward with a call counter (HF looks it up at call time)."""
    import transformers.models.clip.modeling_clip as mc
    import transformers.models.dinov2.modeling_dinov2 as md
    counts = {"clip": 0, "dino": 0}
    for key, mod in (("clip", mc), ("dino", md)):
        orig = mod.eager_attention_forward

        def counted(*a, _orig=orig, _key=key, **k):
            counts[_key] += 1
            return _orig(*a, **k)
        mod.eager_attention_forward = counted
    return counts


def preprocess(x, size, mean, std):
    y = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (y - m) / s


def clip_attention_f64(module, query, key, value, attention_mask, scaling, dropout=0.0, **_kw):
    """HF's CLIP eager_attention_forward with the softmax in the input dtype (variant only)."""
    w = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        w = w + attention_mask
    w = torch.softmax(w, dim=-1)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


def dino_pos_interp_f64(self, embeddings, height, width):
    """HF's Dinov2Embeddings.interpolate_pos_encoding without the float32 cast (variant only)."""
    pos = self.position_embeddings
    n, dim = pos.shape[1] - 1, pos.shape[2]
    g = int(round(math.sqrt(n)))
    grid = pos[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height // self.patch_size, width // self.patch_size),
                         mode="bicubic", align_corners=False)
    return torch.cat((pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


def run_net(key, x32, counts):
    spec = NETS[key]
    model32, names = build(key)
    model64 = copy.deepcopy(model32).double().eval()
    out, t = {}, {}
    with torch.no_grad():
        for tag, model, x in (("f32", model32, x32), ("f64", model64, x32.double())):
            inp = preprocess(x, spec["size"], spec["mean"], spec["std"])
            c0, t0 = counts[key], time.perf_counter()
            out[tag] = getattr(model(pixel_values=inp), spec["output"]).double().numpy()
            t[tag] = time.perf_counter() - t0
            assert counts[key] - c0 == spec["cfg"]["num_hidden_layers"], "eager attention did not run"
            out[tag + "_input"] = inp.double().numpy()
        inp64 = preprocess(x32.double(), spec["size"], spec["mean"], spec["std"])
        if key == "clip":
            import transformers.models.clip.modeling_clip as mc
            saved, mc.eager_attention_forward = mc.eager_attention_forward, clip_attention_f64
            try:
                out["all_f64"] = model64(pixel_values=inp64).image_embeds.numpy()
            finally:
                mc.eager_attention_forward = saved
        else:
            model64.embeddings.interpolate_pos_encoding = types.MethodType(dino_pos_interp_f64, model64.embeddings)
            out["all_f64"] = model64(pixel_values=inp64).pooler_output.numpy()
    f64 = out["f64"]
    doc = {
        "config": spec["cfg"], "class": type(model32).__name__, "output": spec["output"],
        "attention_impl": model32.config._attn_implementation,
        "input_shape": list(INPUT_SHAPE),
        "resize": f"F.interpolate(x, size=({spec['size']}, {spec['size']}), mode='bicubic', align_corners=False)",
        "mean": spec["mean"], "std": spec["std"],
        "resized_head": [float(v) for v in out["f64_input"].reshape(-1)[:16]],
        "resized_f32_vs_f64_max_abs_diff": float(np.abs(out["f32_input"] - out["f64_input"]).max()),
        "embeds_f64": f64.tolist(),
        "embeds_f32_vs_f64_max_abs_diff": float(np.abs(out["f32"] - f64).max()),
        "max_abs": float(np.abs(f64).max()),
        "f32_step_in_f64_run": ("softmax in eager attention (dtype=torch.float32)" if key == "clip" else
                                "bicubic interpolation of the position grid (.to(torch.float32))"),
        "embeds_f64_all_f64": out["all_f64"].tolist(),
        "all_f64_vs_f64_max_abs_diff": float(np.abs(out["all_f64"] - f64).max()),
        "embeds_f32_vs_all_f64_max_abs_diff": float(np.abs(out["f32"] - out["all_f64"]).max()),
    }
    assert doc["all_f64_vs_f64_max_abs_diff"] > 0, "the float64 variant did not take effect"
    return doc, names, t


def write_names(path, key, names):
    cfg = NETS[key]["cfg"]
    lines = [f"# {key}: state_dict entries of the tiny HF model, in order, `name dim0,dim1,...`"
             " or `name not-assigned`",
             "# generated by scripts/reference/embed_fixtures.py; lines starting with # are comments",
             "# config: " + " ".join(f"{k}={v}" for k, v in cfg.items()),
             "# values: float64 formula, then astype(float32); v = sym(name, i), u = unit(name, i), row-major;"
             " first matching rule:"] + [f"#   {r}" for r in RULES]
    n_na = sum(shape is None for _, shape in names)
    lines.append(f"# entries: {len(names)} total, {len(names) - n_na} assigned, {n_na} not-assigned")
    if key == "dino":
        lines.append("# note: transformers 5.x names; Hub DINOv2 checkpoints use attention.attention.{query,key,value}"
                     " and attention.output.dense, renamed on load to attention.{q,k,v,o}_proj")
    for name, shape in names:
        lines.append(f"{name} " + (",".join(map(str, shape)) if shape is not None else "not-assigned"))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def bicubic_case():
    x = torch.from_numpy(detvalues.sym("embed/bicubic", BICUBIC_SHAPE))
    cases = []
    for h, w in BICUBIC_SIZES:
        y = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
        if (h, w) == BICUBIC_SHAPE[2:]:
            assert torch.equal(y, x), "same-size bicubic is not the identity"
        cases.append({"size": [h, w], "output": y.numpy().reshape(-1).tolist()})
    return {"input": "sym('embed/bicubic', i), float64, row-major", "input_shape": list(BICUBIC_SHAPE),
            "call": "F.interpolate(x, size=(h, w), mode='bicubic', align_corners=False)", "cases": cases}


def mmd_case():
    def rows_normalised(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    x = rows_normalised(detvalues.sym("embed/mmd/x", (6, 32)))
    y = rows_normalised(0.7 * detvalues.sym("embed/mmd/y", (5, 32)) + 0.2)
    gamma = 1.0 / (2.0 * MMD_SIGMA ** 2)

    def kmean(a, b):  # CMMD's form: ||a-b||^2 = -2 a.b + |a|^2 + |b|^2
        d2 = -2.0 * (a @ b.T) + np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :]
        return np.mean(np.exp(-gamma * d2))
    value = MMD_SCALE * (kmean(x, x) + kmean(y, y) - 2.0 * kmean(x, y))

    def kmean_direct(a, b):
        return np.mean(np.exp(-gamma * np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=2)))
    direct = MMD_SCALE * (kmean_direct(x, x) + kmean_direct(y, y) - 2.0 * kmean_direct(x, y))
    assert abs(value - direct) <= 1e-12 * max(1.0, abs(value)), (value, direct)
    return {"x": "rows of sym('embed/mmd/x', i) [6,32], each L2-normalised",
            "y": "rows of 0.7*sym('embed/mmd/y', i) + 0.2 [5,32], each L2-normalised",
            "estimator": "biased (diagonals included): scale*(mean Kxx + mean Kyy - 2 mean Kxy), "
                         "K = exp(-gamma*(-2 a.b + |a|^2 + |b|^2)), gamma = 1/(2 sigma^2)",
            "sigma": MMD_SIGMA, "scale": MMD_SCALE, "x_shape": [6, 32], "y_shape": [5, 32],
            "value": float(value), "value_17g": "%.17g" % value, "value_direct_sqdist": float(direct)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--outdir", default=DEFAULT_OUTDIR)
    args = ap.parse_args()
    socket.socket.connect = _no_network  # guard: nothing may download
    socket.create_connection = _no_network
    torch.set_num_threads(1)
    detvalues.self_check(verbose=False)
    import transformers

    counts = count_eager_calls()
    x32 = torch.from_numpy(detvalues.unit("embed/input", INPUT_SHAPE).astype(np.float32))
    os.makedirs(args.outdir, exist_ok=True)
    doc = {"description": "CLIP / DINOv2 embedder parity (tiny HF models, deterministic weights), bicubic "
                          "and CMMD fixtures; see scripts/reference/embed_fixtures.py and README.md",
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "numpy": np.__version__},
           "weights": RULES, "reference_run": "float64 (model.double()), eval mode, torch.no_grad()",
           "input": "float32(unit('embed/input', i)), NCHW, row-major"}
    impls = set()
    for key in NETS:
        net_doc, names, t = run_net(key, x32, counts)
        impls.add(net_doc.pop("attention_impl"))
        doc[key] = net_doc
        write_names(os.path.join(args.outdir, f"{key}_names.txt"), key, names)
        extra = f", all-f64 variant vs f64 {net_doc['all_f64_vs_f64_max_abs_diff']:.3e}"
        print(f"[{key}] {net_doc['output']} max|x| {net_doc['max_abs']:.6f}, max|f32 - f64| "
              f"{net_doc['embeds_f32_vs_f64_max_abs_diff']:.3e} (resized input {net_doc['resized_f32_vs_f64_max_abs_diff']:.3e}"
              f"{extra}); forward f32 {t['f32'] * 1e3:.1f} ms, f64 {t['f64'] * 1e3:.1f} ms")
    assert len(impls) == 1
    doc["attention_impl"] = impls.pop()
    doc["bicubic"] = bicubic_case()
    doc["mmd"] = mmd_case()
    print(f"attention implementation: {doc['attention_impl']} (eager calls counted: {counts})")
    print(f"mmd value {doc['mmd']['value_17g']} (direct-sqdist form {doc['mmd']['value_direct_sqdist']!r})")
    with open(os.path.join(args.outdir, "parity.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    for fn in sorted(os.listdir(args.outdir)):
        print("wrote", os.path.join(args.outdir, fn), os.path.getsize(os.path.join(args.outdir, fn)), "bytes")


if __name__ == "__main__":
    main()
