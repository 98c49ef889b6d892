//! Deterministic test values shared with the Python reference scripts
//! (`scripts/reference/detvalues.py`): element `i` of an array named `name` is a hash of
//! (name, i), so Rust and PyTorch/NumPy build bit-identical weights and inputs without
//! shipping them. Used for the Inception parity fixtures and the FD fixtures.

/// SplitMix64's output mix.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    crate::hash::fnv1a(bytes)
}

/// Element `i` of the named array, uniform in [0, 1).
pub fn unit(name: &str, i: u64) -> f64 {
    unit_keyed(fnv1a64(name.as_bytes()), i)
}

fn unit_keyed(key: u64, i: u64) -> f64 {
    let u = mix64(key.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    (u >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// `n` values of the named array, uniform in [0, 1).
pub fn units(name: &str, n: usize) -> Vec<f64> {
    let key = fnv1a64(name.as_bytes());
    (0..n as u64).map(|i| unit_keyed(key, i)).collect()
}

/// `n` values of the named array, uniform in [-1, 1).
pub fn syms(name: &str, n: usize) -> Vec<f64> {
    units(name, n).into_iter().map(|u| 2.0 * u - 1.0).collect()
}

/// The deterministic weights of the embedding-network fixtures
/// (`scripts/reference/embed_fixtures.py`), by name first, then by shape: position and class
/// embeddings `0.5*sym`; layer scales `0.1 + 0.9*unit`; 1-D weights (norms) `1 + 0.1*sym`;
/// 1-D biases `0.05*sym`; matrices and kernels `sym * sqrt(3 / fan_in)`. Computed in f64;
/// the networks store them rounded to f32. None for a name no rule covers.
pub fn network_weight(name: &str, shape: &[usize]) -> Option<Vec<f64>> {
    let n: usize = shape.iter().product();
    if ["position_embedding", "class_embedding", "cls_token", "mask_token"].iter().any(|k| name.contains(k)) {
        return Some(syms(name, n).into_iter().map(|v| 0.5 * v).collect());
    }
    if name.ends_with("lambda1") {
        return Some(units(name, n).into_iter().map(|u| 0.1 + 0.9 * u).collect());
    }
    match shape.len() {
        1 if name.ends_with(".weight") => Some(syms(name, n).into_iter().map(|v| 1.0 + 0.1 * v).collect()),
        1 if name.ends_with(".bias") => Some(syms(name, n).into_iter().map(|v| 0.05 * v).collect()),
        d if d >= 2 => {
            let fan_in: usize = shape[1..].iter().product();
            let s = (3.0 / fan_in as f64).sqrt();
            Some(syms(name, n).into_iter().map(|v| v * s).collect())
        }
        _ => None,
    }
}
