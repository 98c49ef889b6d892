//! The project's one stable (non-cryptographic) hash: 64-bit FNV-1a. Stable across processes,
//! platforms and Rust versions (unlike `std`'s `DefaultHasher`), so it can fingerprint things
//! that several processes must agree on: parameter lists, gradient layouts, rendezvous
//! payloads, a sweep's resolved configs, deterministic values shared with Python scripts.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// An FNV-1a state; feed bytes with [`Fnv1a::write`], read with [`Fnv1a::finish`].
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(OFFSET)
    }
}

impl Fnv1a {
    /// A state that starts from the standard offset mixed with `seed` (0: plain FNV-1a).
    pub fn seeded(seed: u64) -> Self {
        Self(OFFSET ^ seed)
    }

    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(PRIME);
        }
        self
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    Fnv1a::default().write(bytes).finish()
}

#[cfg(test)]
mod tests {
    /// The published FNV-1a 64 test vectors.
    #[test]
    fn matches_the_reference_values() {
        assert_eq!(super::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
