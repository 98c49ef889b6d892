#!/usr/bin/env python3
"""Frechet distance the pytorch-fid way, for benchmarking against the Rust FD.

Usage: python3 bench/fd_scipy.py FEATS_A.npy FEATS_B.npy [--impl auto|pytorch-fid|local]

Each file holds an (N, D) float32 or float64 array. Like pytorch-fid's
calculate_activation_statistics, the statistics are taken on the array as
loaded: mu = np.mean(x, axis=0) (keeps float32 for float32 input),
sigma = np.cov(x, rowvar=False) (float64, N-1 normalisation). The distance is
pytorch_fid.fid_score.calculate_frechet_distance (impl "pytorch-fid", the
default when it imports) or the same steps written out below (impl "local"):
scipy.linalg.sqrtm(sigma1 @ sigma2, disp=False), retry with 1e-6 on the
diagonals if not finite, real part, |mu1-mu2|^2 + tr s1 + tr s2 - 2 tr covmean.

Prints one JSON line:
  {"fd", "seconds_stats", "seconds_fd", "seconds_total", "impl", "n_a", "n_b", "d", "dtype", "eps_retry"}
seconds_stats: mean+cov of both sets; seconds_fd: the distance function
(matrix product, sqrtm, traces); seconds_total: from loaded arrays to number.
BLAS threads follow the usual environment (e.g. OPENBLAS_NUM_THREADS).
"""

import argparse
import contextlib
import io
import json
import os
import sys
import time
import warnings

import numpy as np


# The written-out pytorch-fid steps live with the fixture generator; one copy serves both.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "reference"))
from fd_fixtures import fd_sqrtm_local  # noqa: E402


def fd_local(mu1, sigma1, mu2, sigma2):
    """fd_sqrtm_local, announcing an eps retry the way pytorch-fid does (on stdout)."""
    fd, retry = fd_sqrtm_local(mu1, sigma1, mu2, sigma2)
    if retry:
        print("fid calculation produces singular product; adding 1e-06 to diagonal of cov estimates")
    return fd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--impl", choices=["auto", "pytorch-fid", "local"], default="auto")
    args = ap.parse_args()

    fd_fn, impl = fd_local, "local"
    if args.impl in ("auto", "pytorch-fid"):
        try:
            from pytorch_fid.fid_score import calculate_frechet_distance
            fd_fn, impl = calculate_frechet_distance, "pytorch-fid"
        except Exception:
            if args.impl == "pytorch-fid":
                raise

    a = np.load(args.a, allow_pickle=False)
    b = np.load(args.b, allow_pickle=False)
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 2 or x.dtype not in (np.float32, np.float64):
            sys.exit(f"{name}: expected a 2-d float32/float64 array, got {x.dtype} {x.shape}")
    if a.shape[1] != b.shape[1]:
        sys.exit(f"feature dims differ: {a.shape} vs {b.shape}")

    # warm-up (lazy imports / first-call costs inside scipy stay out of the timings)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fd_fn(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
        np.cov(np.eye(3), rowvar=False)

    t0 = time.perf_counter()
    mu1, sigma1 = np.mean(a, axis=0), np.cov(a, rowvar=False)
    mu2, sigma2 = np.mean(b, axis=0), np.cov(b, rowvar=False)
    t1 = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fd = fd_fn(mu1, sigma1, mu2, sigma2)
    t2 = time.perf_counter()

    print(json.dumps({
        "fd": float(fd),
        "seconds_stats": t1 - t0,
        "seconds_fd": t2 - t1,
        "seconds_total": t2 - t0,
        "impl": impl,
        "n_a": int(a.shape[0]),
        "n_b": int(b.shape[0]),
        "d": int(a.shape[1]),
        "dtype": str(a.dtype) if a.dtype == b.dtype else f"{a.dtype}/{b.dtype}",
        "eps_retry": "adding" in out.getvalue(),
    }))


if __name__ == "__main__":
    main()
