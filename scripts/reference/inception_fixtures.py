"""Parity fixtures for the Rust port of pytorch-fid's FID Inception-v3.

Writes trainer/tests/fixtures/inception/{names.txt, parity.json,
features_small.npy, features_large.npy}.

The network is pytorch-fid's own code: pytorch_fid.inception.InceptionV3
(output block 3, resize_input=True, normalize_input=True), which calls
pytorch_fid.inception.fid_inception_v3() (torchvision Inception3 patched with
FIDInceptionA / C / E_1 / E_2). Nothing is downloaded: the module-level
`load_state_dict_from_url` that fid_inception_v3 calls is replaced (for this
process only) by a function that returns a deterministic state dict built from
scripts/reference/detvalues.py, keyed by exactly the names the real
pt_inception-2015-12-05-6726825d.pth uses (the names of the module that
fid_inception_v3 loads into, which load_state_dict(strict=True) checks).
Outbound sockets are disabled as a guard.

Parameter values (float64 by the formula, then rounded to float32 because the
model's parameters are float32, like the real weights file):
    *.conv.weight [O,I,kh,kw]: sym(name, i) * sqrt(6.0 / (I*kh*kw))
    *.bn.weight:        1.0 + 0.1 * sym(name, i)
    *.bn.bias:          0.1 * sym(name, i)
    *.bn.running_mean:  0.1 * sym(name, i)
    *.bn.running_var:   1.0 + 0.5 * unit(name, i)
    fc.weight:          sym(name, i) * sqrt(3.0 / 2048.0)
    fc.bias:            0.01 * sym(name, i)
    *.num_batches_tracked: left as constructed (0)
The float64 run is model.double() of that float32 model (same weights).

Inputs (float32, NCHW, values in [0,1)):
    small: [2,3,64,64]    x = float32(unit("inception/input/small", i))
    large: [1,3,320,320]  x = float32(unit("inception/input/large", i))

Usage: python3 scripts/reference/inception_fixtures.py [--outdir DIR] [--no-bench] [--bench-reps K]
"""

import argparse
import json
import math
import os
import socket
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detvalues  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUTDIR = os.path.join(REPO, "trainer", "tests", "fixtures", "inception")

INPUTS = {
    "small": (2, 3, 64, 64),
    "large": (1, 3, 320, 320),
}

# Stage labels, in execution order, for the children of InceptionV3.blocks.
BLOCK_LABELS = [
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1"],
    ["Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"],
    ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
    ["Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"],
]
N_SAMPLES = 64


def _no_network(*_a, **_k):
    raise RuntimeError("network access is disabled in inception_fixtures.py")


def deterministic_value(name, shape):
    """float64 ndarray for one state-dict entry (see module docstring)."""
    if name.endswith(".conv.weight"):
        o, i, kh, kw = shape
        return detvalues.sym(name, shape) * math.sqrt(6.0 / (i * kh * kw))
    if name.endswith(".bn.weight"):
        return 1.0 + 0.1 * detvalues.sym(name, shape)
    if name.endswith(".bn.bias") or name.endswith(".bn.running_mean"):
        return 0.1 * detvalues.sym(name, shape)
    if name.endswith(".bn.running_var"):
        return 1.0 + 0.5 * detvalues.unit(name, shape)
    if name == "fc.weight":
        return detvalues.sym(name, shape) * math.sqrt(3.0 / 2048.0)
    if name == "fc.bias":
        return 0.01 * detvalues.sym(name, shape)
    raise KeyError("no rule for state-dict entry %r" % name)


def build_model():
    """Build pytorch-fid's InceptionV3 with deterministic weights, without downloading.

    Returns (model, inception, names) where `inception` is the torchvision-based
    module fid_inception_v3() built (its state-dict names are the .pth names)
    and `names` is [(name, shape)] in state-dict order.
    """
    import pytorch_fid.inception as pfi

    captured = {}
    orig_build = pfi._inception_v3

    def capturing_build(*a, **k):
        m = orig_build(*a, **k)
        captured["inception"] = m
        return m

    def fake_load_state_dict_from_url(url, *a, **k):
        assert url == pfi.FID_WEIGHTS_URL, url
        inc = captured["inception"]  # by now fid_inception_v3 has swapped in the FID blocks
        sd = {}
        names = []
        for name, t in inc.state_dict().items():
            names.append((name, tuple(t.shape)))
            if name.endswith(".num_batches_tracked"):
                sd[name] = t.clone()
                continue
            v = deterministic_value(name, tuple(t.shape)).astype(np.float32)
            sd[name] = torch.from_numpy(np.ascontiguousarray(v))
        captured["names"] = names
        captured["expected"] = sd
        return sd

    saved = (pfi._inception_v3, pfi.load_state_dict_from_url)
    pfi._inception_v3 = capturing_build
    pfi.load_state_dict_from_url = fake_load_state_dict_from_url
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                                resize_input=True, normalize_input=True)
    finally:
        pfi._inception_v3, pfi.load_state_dict_from_url = saved
    model.eval()
    inc = captured["inception"]

    # --- verification: every entry of the loaded module carries the formula value
    n_set = 0
    inc_sd = inc.state_dict()
    assert list(inc_sd.keys()) == [n for n, _ in captured["names"]]
    for name, t in inc_sd.items():
        if name.endswith(".num_batches_tracked"):
            continue
        exp = captured["expected"][name]
        assert t.dtype == torch.float32 and torch.equal(t, exp), name
        n_set += 1
    # every tensor of the wrapper is one of those tensors (same storage)
    ptr_to_name = {t.data_ptr(): n for n, t in inc_sd.items()}
    wrapper_names = {}
    for wname, t in model.state_dict().items():
        assert t.data_ptr() in ptr_to_name, wname
        wrapper_names[wname] = ptr_to_name[t.data_ptr()]
    # the stage labels match the modules the wrapper runs
    for bi, labels in enumerate(BLOCK_LABELS):
        assert len(model.blocks[bi]) == len(labels)
        for mi, label in enumerate(labels):
            if hasattr(inc, label) and not label.startswith(("maxpool", "avgpool")):
                assert model.blocks[bi][mi] is getattr(inc, label), label
    return model, inc, captured["names"], n_set, wrapper_names


def write_names(path, inc, names, n_set):
    nbt = [n for n, _ in names if n.endswith(".num_batches_tracked")]
    lines = [
        "# pytorch-fid 0.3.0 FID Inception-v3: state-dict entries (names as in",
        "# pt_inception-2015-12-05-6726825d.pth), in state-dict order, `name shape`.",
        "# Generated by scripts/reference/inception_fixtures.py; lines starting with # are comments.",
        f"# entries: {len(names)} total, {n_set} given deterministic values, "
        f"{len(nbt)} *.num_batches_tracked (0-d int64, written `scalar`; left at 0; ignored by the Rust loader)",
        "# constants:",
        "#   BasicConv2d = Conv2d(bias=False) -> BatchNorm2d(eps=0.001) -> ReLU; BN in eval mode uses running stats",
        "#   resize: F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)"
        " (antialias not passed -> False), then x = 2*x - 1",
        "#   wrapper maxpool1/maxpool2: MaxPool2d(kernel_size=3, stride=2) (padding 0, ceil_mode False)",
        "#   Mixed_5b/5c/5d (FIDInceptionA), 6b-6e (FIDInceptionC), 7b (FIDInceptionE_1) branch_pool:"
        " F.avg_pool2d(k=3, s=1, p=1, count_include_pad=False)",
        "#   Mixed_7c (FIDInceptionE_2) branch_pool: F.max_pool2d(k=3, s=1, p=1)",
        "#   Mixed_6a (torchvision InceptionB) / Mixed_7a (InceptionD) pool branch: F.max_pool2d(k=3, s=2)",
        "#   final: AdaptiveAvgPool2d((1, 1)) -> 2048 features; fc (1008 classes) is not used for FID",
        "#   concat order (dim 1): A: 1x1, 5x5, 3x3dbl, pool; B: 3x3, 3x3dbl, pool;"
        " C: 1x1, 7x7, 7x7dbl, pool; D: 3x3, 7x7x3, pool;",
        "#      E: 1x1, [3x3_2a, 3x3_2b], [3x3dbl_3a, 3x3dbl_3b], pool",
        "# conv geometry (module: kernel stride padding), from the constructed model:",
    ]
    for mname, m in inc.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            lines.append("#   %s: k=%dx%d s=%d,%d p=%d,%d" % (
                mname, m.kernel_size[0], m.kernel_size[1], m.stride[0], m.stride[1],
                m.padding[0], m.padding[1]))
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.eps == 0.001, (mname, m.eps)
    for name, shape in names:
        lines.append("%s %s" % (name, ",".join(str(s) for s in shape) if shape else "scalar"))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def stage_hooks(model, store):
    hooks = []

    def pre(_m, args):
        store.append(("input", args[0].detach().clone()))

    hooks.append(model.blocks[0][0].register_forward_pre_hook(pre))
    for bi, labels in enumerate(BLOCK_LABELS):
        for mi, label in enumerate(labels):
            def post(_m, _args, out, label=label):
                store.append((label, out.detach().clone()))
            hooks.append(model.blocks[bi][mi].register_forward_hook(post))
    return hooks


def run(model, x):
    store = []
    hooks = stage_hooks(model, store)
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(out) == 1
    return out[0].reshape(out[0].shape[0], -1), store


def stage_summary(t64):
    a = t64.numpy().astype(np.float64, copy=False)
    flat = a.reshape(-1)
    n = flat.size
    idx = [(k * n) // N_SAMPLES for k in range(N_SAMPLES)]
    return {
        "shape": list(a.shape),
        "mean": float(flat.mean()),
        "std": float(flat.std()),  # population std (ddof=0)
        "max_abs": float(np.abs(flat).max()),
        "sample_index": idx,
        "samples": [float(flat[i]) for i in idx],
    }


def bench(model32, batch=8, reps=3):
    torch.set_num_threads(2)
    x = torch.from_numpy(detvalues.unit("inception/bench", (batch, 3, 299, 299)).astype(np.float32))
    with torch.no_grad():
        model32(x)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model32(x)
            times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--outdir", default=DEFAULT_OUTDIR)
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--bench-reps", type=int, default=3)
    args = ap.parse_args()

    socket.socket.connect = _no_network  # guard: nothing may download
    socket.create_connection = _no_network
    torch.set_num_threads(2)
    detvalues.self_check(verbose=False)

    import importlib.metadata as md
    import pytorch_fid.inception as pfi
    import inspect
    src = inspect.getsource(pfi.InceptionV3.forward)
    assert "mode='bilinear'" in src and "align_corners=False" in src and "antialias" not in src
    assert "2 * x - 1" in src

    model32, inc, names, n_set, wrapper_names = build_model()
    model64 = build_model()[0].double().eval()

    os.makedirs(args.outdir, exist_ok=True)
    write_names(os.path.join(args.outdir, "names.txt"), inc, names, n_set)

    doc_sets = {}
    feat_diffs = {}
    for set_name, shape in INPUTS.items():
        x32 = torch.from_numpy(detvalues.unit(f"inception/input/{set_name}", shape).astype(np.float32))
        t0 = time.perf_counter()
        f64, st64 = run(model64, x32.double())
        t1 = time.perf_counter()
        f32, st32 = run(model32, x32)
        t2 = time.perf_counter()
        # the recorded first stage equals a direct call of the documented resize + normalise
        ref_in = 2 * F.interpolate(x32.double(), size=(299, 299), mode="bilinear", align_corners=False) - 1
        assert torch.equal(st64[0][1], ref_in)
        assert [s for s, _ in st64] == ["input"] + [l for b in BLOCK_LABELS for l in b]

        stages = []
        for (label, t64), (label32, t32) in zip(st64, st32):
            assert label == label32 and t64.shape == t32.shape
            s = {"stage": label}
            s.update(stage_summary(t64))
            d = (t32.double() - t64).abs().max().item()
            s["f32_max_abs_diff"] = d
            s["f32_max_abs_diff_over_max_abs"] = d / max(s["max_abs"], 1e-300)
            stages.append(s)

        f64n = f64.numpy()
        f32n = f32.double().numpy()
        absd = np.abs(f32n - f64n)
        rel_elem = absd / np.maximum(np.abs(f64n), 1e-30)
        feat_diffs[set_name] = {
            "max_abs_diff": float(absd.max()),
            "max_abs_diff_over_max_abs": float(absd.max() / np.abs(f64n).max()),
            "max_elementwise_rel_diff": float(rel_elem.max()),
            "max_elementwise_rel_diff_where_abs_ge_1e-3_max": float(
                rel_elem[np.abs(f64n) >= 1e-3 * np.abs(f64n).max()].max()),
            "min_feature": float(f64n.min()),
        }
        np.save(os.path.join(args.outdir, f"features_{set_name}.npy"),
                f64n.astype("<f4"), allow_pickle=False)
        doc_sets[set_name] = {
            "input_shape": list(shape),
            "input_formula": f"float32(unit('inception/input/{set_name}', i)), row-major NCHW",
            "features_file": f"features_{set_name}.npy",
            "features_f64_head": [float(v) for v in f64n.reshape(-1)[:8]],
            "f32_vs_f64_features": feat_diffs[set_name],
            "stages": stages,
        }
        print(f"[{set_name}] input {list(shape)}: f64 forward {t1 - t0:.2f}s, f32 forward {t2 - t1:.2f}s")
        for s in stages:
            print(f"  {s['stage']:<14} {str(s['shape']):<20} mean {s['mean']:+.6e} std {s['std']:.6e} "
                  f"max|x| {s['max_abs']:.6e}  f32 diff/max {s['f32_max_abs_diff_over_max_abs']:.2e}")
        print(f"  features f32 vs f64: {json.dumps(feat_diffs[set_name])}")

    doc = {
        "description": "Parity fixtures for pytorch-fid's FID Inception-v3 with deterministic weights; "
                       "see scripts/reference/inception_fixtures.py and README.md",
        "versions": {
            "torch": torch.__version__,
            "torchvision": md.version("torchvision"),
            "pytorch_fid": md.version("pytorch-fid"),
            "numpy": np.__version__,
        },
        "weights": "float64 formula values rounded to float32; float64 run = model.double()",
        "reference_run": "float64, eval mode, torch.no_grad()",
        "stage_stats": "mean/std (population, ddof=0)/max_abs over the whole tensor incl. batch; "
                       "samples at flat row-major indices floor(k*numel/64), k=0..63; "
                       "f32_max_abs_diff = max |float32 run - float64 run| at that stage",
        "bn_eps": 0.001,
        "resize": "F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False); x = 2*x - 1",
        "sets": doc_sets,
    }
    with open(os.path.join(args.outdir, "parity.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")

    if not args.no_bench:
        load0 = tuple(round(v, 2) for v in os.getloadavg())
        times = bench(model32, reps=args.bench_reps)
        ips = [8 / t for t in times]
        print(f"bench: float32 forward, batch 8 @ 3x299x299, torch.set_num_threads(2): "
              f"times {[round(t, 3) for t in times]} s -> images/s best {max(ips):.2f}, "
              f"median {sorted(ips)[len(ips) // 2]:.2f} (load average before: {load0}, after: "
              f"{tuple(round(v, 2) for v in os.getloadavg())})")
    for fn in sorted(os.listdir(args.outdir)):
        print("wrote", os.path.join(args.outdir, fn), os.path.getsize(os.path.join(args.outdir, fn)), "bytes")


if __name__ == "__main__":
    main()
