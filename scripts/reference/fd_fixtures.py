"""Frechet-distance reference fixtures -> trainer/tests/fixtures/fd/cases.json

For every case (D, N):
    A[n, d] = sym(f"fd/{D}/{N}/a", n*D + d)
    B[n, d] = 0.8 * sym(f"fd/{D}/{N}/b", n*D + d) + 0.05 * sym(f"fd/{D}/{N}/shift", d)
(float64; each product rounded separately, then the sum; no FMA.)
    mu    = X.mean(axis=0)
    sigma = np.cov(X, rowvar=False)          # N-1 normalisation

fd_pytorch_fid: pytorch_fid.fid_score.calculate_frechet_distance when that
package imports, else `fd_sqrtm_local` below (same logic, written here); the
json records which one ran ("fd_impl").
fd_eigh: independent float64 value via symmetric eigendecompositions:
    S1h = V diag(sqrt(max(w, 0))) V^T   with (w, V) = eigh(sigma_a)
    tr sqrt(sigma_a sigma_b) = sum sqrt(max(eigvalsh(S1h sigma_b S1h), 0))
    (S1h sigma_b S1h is symmetrised as (M + M^T)/2 before eigvalsh)
fd_nuclear: tr sqrt(sigma_a sigma_b) as the nuclear norm of L_a^T L_b from the
centred data (see fd_nuclear); the most accurate of the three, esp. for N < D.
fd_mpmath_40_digits: fd_nuclear's quantity in mpmath (N < D cases with N*D <=
4096 only, else null), rounded to float64; asserted to match fd_nuclear to 1e-13.

Usage: python3 scripts/reference/fd_fixtures.py [--out PATH] [--quick]
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
import scipy
from scipy import linalg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detvalues  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "trainer", "tests", "fixtures", "fd", "cases.json")

CASES = [(64, 10), (64, 50), (64, 200), (64, 1000), (2048, 100), (2048, 1000), (2048, 3000)]


def features(D, N):
    a = detvalues.sym(f"fd/{D}/{N}/a", (N, D))
    b = 0.8 * detvalues.sym(f"fd/{D}/{N}/b", (N, D))
    shift = 0.05 * detvalues.sym(f"fd/{D}/{N}/shift", (D,))
    b = b + shift[None, :]
    return a, b


def stats(x):
    return np.mean(x, axis=0), np.cov(x, rowvar=False)


def fd_sqrtm_local(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Same steps as pytorch-fid 0.3.0's calculate_frechet_distance (own code).

    Returns (fd, eps_retry_used).
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    with warnings.catch_warnings():  # scipy >= 1.16 deprecates `disp`; keep the same call
        warnings.simplefilter("ignore", DeprecationWarning)
        covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    retry = False
    if not np.isfinite(covmean).all():
        retry = True
        off = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + off).dot(sigma2 + off))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("Imaginary component %g" % np.max(np.abs(covmean.imag)))
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean), retry


def _load_pytorch_fid():
    # Imported once up front (it pulls in torch), so it does not distort the timings.
    try:
        from pytorch_fid.fid_score import calculate_frechet_distance
        import importlib.metadata as md
        impl = "pytorch_fid.fid_score.calculate_frechet_distance (pytorch-fid %s)" % md.version("pytorch-fid")
        return calculate_frechet_distance, impl
    except Exception as e:  # fallback path
        print("pytorch-fid not importable (%s); using fd_sqrtm_local" % e)
        return None, "fd_sqrtm_local (pytorch-fid not importable)"


_PFID = None


def fd_pytorch_fid(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's own function if importable. Returns (fd, impl, eps_retry)."""
    global _PFID
    if _PFID is None:
        _PFID = _load_pytorch_fid()
    calculate_frechet_distance, impl = _PFID
    if calculate_frechet_distance is None:
        fd, retry = fd_sqrtm_local(mu1, sigma1, mu2, sigma2)
        return fd, impl, retry
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # it prints a message when it adds eps
        fd = calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    retry = "adding" in buf.getvalue()
    return float(fd), impl, retry


def fd_eigh(mu1, sigma1, mu2, sigma2):
    w, v = np.linalg.eigh(sigma1)
    s1h = (v * np.sqrt(np.maximum(w, 0.0))) @ v.T
    m = s1h @ sigma2 @ s1h
    m = 0.5 * (m + m.T)
    lam = np.linalg.eigvalsh(m)
    tr_covmean = np.sum(np.sqrt(np.maximum(lam, 0.0)))
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fd_nuclear(a, b):
    """Third value, no square roots of (near-)zero eigenvalues: for any factors
    S1 = L1 L1^T, S2 = L2 L2^T, tr sqrt(S1 S2) = ||L1^T L2||_* (sum of singular
    values). With centred data, S = Xc^T Xc / (N-1); Xc is replaced by the
    triangular factor of its QR decomposition when N > D (same Gram matrix).
    This is backward stable even when N < D, where S1 S2 is singular and both
    sqrtm and the eigh route take square roots of rounding noise.
    """
    def factor(x):
        xc = x - x.mean(axis=0)
        if xc.shape[0] > xc.shape[1]:
            xc = np.linalg.qr(xc, mode="r")
        return xc / np.sqrt(x.shape[0] - 1)  # rows r_k with S = sum_k r_k^T r_k

    fa, fb = factor(a), factor(b)
    tr_covmean = np.sum(np.linalg.svd(fa @ fb.T, compute_uv=False))
    diff = a.mean(axis=0) - b.mean(axis=0)
    tr_a = np.sum(fa * fa)
    tr_b = np.sum(fb * fb)
    return float(diff.dot(diff) + tr_a + tr_b - 2.0 * tr_covmean)


def fd_mp(a, b, dps=40):
    """Same quantity as fd_nuclear in mpmath at `dps` digits (exact inputs: the
    float64 features). Only used for the small N < D cases (cost grows fast)."""
    import mpmath as mp

    with mp.workdps(dps):
        def centred(x):
            n, d = x.shape
            X = mp.matrix(x.tolist())
            mu = [mp.fsum(X[i, j] for i in range(n)) / n for j in range(d)]
            for i in range(n):
                for j in range(d):
                    X[i, j] -= mu[j]
            return X, mu

        n = a.shape[0]
        ac, mua = centred(a)
        bc, mub = centred(b)
        m = ac * bc.T / (n - 1)
        ev = mp.eigsy(m * m.T, eigvals_only=True)
        tr_covmean = mp.fsum(mp.sqrt(max(e, 0)) for e in ev)
        tr_a = mp.fsum(v ** 2 for v in ac) / (n - 1)
        tr_b = mp.fsum(v ** 2 for v in bc) / (n - 1)
        dd = mp.fsum((x - y) ** 2 for x, y in zip(mua, mub))
        return float(dd + tr_a + tr_b - 2 * tr_covmean)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--quick", action="store_true", help="skip D=2048 cases (no file written)")
    args = ap.parse_args()

    detvalues.self_check(verbose=False)
    fd_pytorch_fid(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))  # import + warm up
    cases = [c for c in CASES if not (args.quick and c[0] > 64)]
    out_cases = []
    impl_used = None
    print(f"{'D':>5} {'N':>5} {'fd_pytorch_fid':>22} {'fd_eigh':>22} {'fd_nuclear':>22} {'p/e':>8} "
          f"{'p/n':>8} {'e/n':>8} {'retry':>5} {'t_gen':>6} {'t_stats':>7} {'t_sqrtm':>7} {'t_eigh':>7} "
          f"{'t_nuc':>6}")
    for D, N in cases:
        t0 = time.perf_counter()
        a, b = features(D, N)
        t1 = time.perf_counter()
        mu_a, sig_a = stats(a)
        mu_b, sig_b = stats(b)
        t2 = time.perf_counter()
        fd_p, impl, retry = fd_pytorch_fid(mu_a, sig_a, mu_b, sig_b)
        t3 = time.perf_counter()
        fd_e = fd_eigh(mu_a, sig_a, mu_b, sig_b)
        t4 = time.perf_counter()
        fd_n = fd_nuclear(a, b)
        t5 = time.perf_counter()
        fd_m = fd_mp(a, b) if (N < D and N * D <= 4096) else None
        if fd_m is not None:
            assert abs(fd_n - fd_m) <= 1e-13 * abs(fd_m), (fd_n, fd_m)
        if D <= 64:  # the local copy of the logic (also in bench/fd_scipy.py) must agree exactly
            fd_l, retry_l = fd_sqrtm_local(mu_a, sig_a, mu_b, sig_b)
            assert fd_l == fd_p and retry_l == retry, (fd_l, fd_p, retry_l, retry)
        impl_used = impl
        rel = abs(fd_p - fd_e) / abs(fd_e)
        rel_pn = abs(fd_p - fd_n) / abs(fd_n)
        rel_en = abs(fd_e - fd_n) / abs(fd_n)
        diff = mu_a - mu_b
        out_cases.append({
            "D": D,
            "N": N,
            "fd_pytorch_fid": fd_p,
            "fd_eigh": fd_e,
            "rel_diff": rel,
            "fd_nuclear": fd_n,
            "rel_diff_pytorch_fid_vs_nuclear": rel_pn,
            "rel_diff_eigh_vs_nuclear": rel_en,
            "fd_mpmath_40_digits": fd_m,
            "eps_retry": retry,
            "trace_sigma_a": float(np.trace(sig_a)),
            "trace_sigma_b": float(np.trace(sig_b)),
            "mean_sq_diff": float(diff.dot(diff)),
            "mu_a_head": [float(x) for x in mu_a[:4]],
            "sigma_a_row0_head": [float(x) for x in sig_a[0, :4]],
            "a_head": [float(x) for x in a.reshape(-1)[:2]],
            "b_head": [float(x) for x in b.reshape(-1)[:2]],
        })
        print(f"{D:>5} {N:>5} {fd_p:>22.17g} {fd_e:>22.17g} {fd_n:>22.17g} {rel:>8.1e} {rel_pn:>8.1e} "
              f"{rel_en:>8.1e} {str(retry):>5} {t1 - t0:>6.2f} {t2 - t1:>7.2f} {t3 - t2:>7.2f} "
              f"{t4 - t3:>7.2f} {t5 - t4:>6.2f}", flush=True)

    if args.quick:
        return
    doc = {
        "description": "Frechet distance fixtures; features from scripts/reference/detvalues.py, "
                       "see scripts/reference/fd_fixtures.py and README.md",
        "feature_formula": {
            "a": "A[n,d] = sym('fd/{D}/{N}/a', n*D+d)",
            "b": "B[n,d] = 0.8*sym('fd/{D}/{N}/b', n*D+d) + 0.05*sym('fd/{D}/{N}/shift', d)",
            "stats": "mu = mean over rows; sigma = np.cov(X, rowvar=False) (N-1)",
        },
        "fd_impl": impl_used,
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__},
        "cases": out_cases,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("wrote", args.out, os.path.getsize(args.out), "bytes")


if __name__ == "__main__":
    main()
