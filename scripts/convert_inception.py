#!/usr/bin/env python3
"""Convert pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth) to the
safetensors file ablate's FID reads.

    python3 scripts/convert_inception.py pt_inception-2015-12-05-6726825d.pth \
        assets/eval/pt_inception-2015-12-05-6726825d.safetensors

The .pth is pytorch-fid's own download (github.com/mseitzer/pytorch-fid releases, FID weights
v0.1). ablate never downloads it: fetch it where you have network access and copy it over.
Needs torch (CPU is enough). Tensor names stay exactly as in the state dict; BatchNorm
`num_batches_tracked` counters are dropped (not used for inference). Every name and shape is
checked against trainer/tests/fixtures/inception/names.txt (the network pytorch-fid builds),
and the Rust loader checks them again. Prints the sha256 of the output: FID protocols record it.
"""
import hashlib
import json
import pathlib
import struct
import sys

import torch

HERE = pathlib.Path(__file__).resolve().parent
NAMES = HERE.parent / "trainer" / "tests" / "fixtures" / "inception" / "names.txt"


def expected_shapes():
    out = {}
    for line in NAMES.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split()
        if shape == "scalar":
            continue
        out[name] = tuple(int(s) for s in shape.split(","))
    return out


def write_safetensors(path, tensors):
    """Minimal safetensors writer (F32 only): 8-byte header length, JSON header, raw data."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous().cpu()
        data = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    tmp = pathlib.Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)
    tmp.replace(path)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    state = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    want = expected_shapes()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    bad = sorted(k for k in want if k in state and tuple(state[k].shape) != want[k])
    if missing or extra or bad:
        sys.exit(f"not pytorch-fid's FID Inception: missing {missing[:5]}, unexpected {extra[:5]}, wrong shape {bad[:5]}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(dst, state)
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    print(f"wrote {dst} ({len(state)} tensors), sha256 {digest}")


if __name__ == "__main__":
    main()
