"""Deterministic test values shared bit-for-bit with the Rust side.

Definitions (all integer arithmetic is uint64 with wrapping):

    splitmix64_mix(z):
        z ^= z >> 30; z *= 0xBF58476D1CE4E5B9
        z ^= z >> 27; z *= 0x94D049BB133111EB
        z ^= z >> 31
    fnv1a64(bytes):
        h = 0xcbf29ce484222325
        for b in bytes: h ^= b; h *= 0x100000001b3
    unit(name, i):           # element i (0-based, row-major) of array `name`
        key = fnv1a64(name.encode("utf-8"))
        u   = splitmix64_mix(key + (i + 1) * 0x9E3779B97F4A7C15)
        return (u >> 11) * 2**-53            # float64 in [0, 1), exact
    sym(name, i) = 2 * unit(name, i) - 1     # float64 in [-1, 1), exact

Run this file directly for the self-check (prints unit("check", i), i = 0..3,
as exact float64 hex and as IEEE-754 bit patterns).
"""

import numpy as np

_MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & _MASK
    return h


def splitmix64_mix(z):
    """Vectorised mix on a numpy uint64 array (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z ^ (z >> np.uint64(30))
        z = z * _M1
        z = z ^ (z >> np.uint64(27))
        z = z * _M2
        z = z ^ (z >> np.uint64(31))
    return z


def unit_flat(name: str, n: int, start: int = 0) -> np.ndarray:
    """unit(name, i) for i = start .. start+n-1, as a float64 vector."""
    key = np.uint64(fnv1a64(name.encode("utf-8")))
    i1 = np.arange(start + 1, start + n + 1, dtype=np.uint64)  # i + 1
    with np.errstate(over="ignore"):
        z = key + i1 * _GOLDEN
    u = splitmix64_mix(z)
    # (u >> 11) < 2**53, so the conversion to float64 and the scaling are exact.
    return (u >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def unit(name: str, shape) -> np.ndarray:
    """Array of the given shape; element with row-major flat index i is unit(name, i)."""
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    n = 1
    for s in shape:
        n *= s
    return unit_flat(name, n).reshape(shape)


def sym(name: str, shape) -> np.ndarray:
    """2 * unit - 1 (exact in float64), in [-1, 1)."""
    return 2.0 * unit(name, shape) - 1.0


def unit_scalar(name: str, i: int) -> float:
    """Pure-Python scalar reference (no numpy), used to cross-check the vectorised path."""
    key = fnv1a64(name.encode("utf-8"))
    z = (key + (i + 1) * 0x9E3779B97F4A7C15) & _MASK
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _MASK
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return float(z >> 11) * 2.0 ** -53


def _bits(x: float) -> str:
    return "0x%016x" % np.array(x, dtype=np.float64).view(np.uint64)


def self_check(verbose: bool = True):
    vec = unit_flat("check", 4)
    out = []
    for i in range(4):
        s = unit_scalar("check", i)
        assert s == vec[i], (i, s, vec[i])
        out.append((i, float(vec[i]), float(vec[i]).hex(), _bits(vec[i])))
    # a non-ASCII name and a large index, both paths must agree
    big = 10**12
    assert unit_scalar("κ/ü", big) == unit_flat("κ/ü", 1, start=big)[0]
    if verbose:
        print('fnv1a64("check") = 0x%016x' % fnv1a64(b"check"))
        for i, v, h, b in out:
            print(f'unit("check", {i}) = {v!r:<22} hex {h:<24} bits {b}')
        print(f'sym("check", 0)  = {2 * out[0][1] - 1!r} bits {_bits(2 * out[0][1] - 1)}')
    return out


if __name__ == "__main__":
    self_check()
