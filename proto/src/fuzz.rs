//! Fuzzing on stable Rust for the workspace's parsers: proptest strategies that mutate valid
//! inputs (bit flips, overwritten, inserted, deleted, duplicated and cut bytes, and tokens
//! parsers trip on), and a runner that counts the inputs and prints the count. Behind the
//! `fuzz` feature, which only the crates' dev-dependencies turn on.
//!
//! Cases per target: `ABLATE_FUZZ_CASES` (default 256; a long run sets, say, 100000).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Inputs per target: `ABLATE_FUZZ_CASES`, default 256.
pub fn cases() -> u32 {
    std::env::var("ABLATE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(256)
}

/// Pieces parsers of text and numbers trip on, spliced in by [`mutations_of`].
const TOKENS: [&[u8]; 16] = [
    b"0", b"-1", b"18446744073709551616", b"1e309", b"nan", b"inf", b"\"", b"'", b"[", b"]]", b"{", b"=", b"\n", b"\\u0000", b"\xff\xfe", b"..",
];

#[derive(Debug, Clone)]
enum Edit {
    FlipBit(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Token(usize, usize),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Edit::FlipBit(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Set(p, b)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, v)| Edit::Insert(p, v)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(p, t)| Edit::Token(p, t)),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Edit::Delete(p, n)),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Edit::Duplicate(p, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % (len + 1) };
        match e {
            Edit::FlipBit(p, b) if !v.is_empty() => {
                let i = p % v.len();
                v[i] ^= 1 << b;
            }
            Edit::Set(p, b) if !v.is_empty() => {
                let i = p % v.len();
                v[i] = *b;
            }
            Edit::Insert(p, bytes) => {
                let i = at(*p, v.len());
                v.splice(i..i, bytes.iter().copied());
            }
            Edit::Token(p, t) => {
                let i = at(*p, v.len());
                v.splice(i..i, TOKENS[*t].iter().copied());
            }
            Edit::Delete(p, n) if !v.is_empty() => {
                let i = p % v.len();
                v.drain(i..(i + n).min(v.len()));
            }
            Edit::Duplicate(p, n) if !v.is_empty() => {
                let i = p % v.len();
                let piece: Vec<u8> = v[i..(i + n).min(v.len())].to_vec();
                v.splice(i..i, piece);
            }
            Edit::Truncate(p) => {
                let i = at(*p, v.len());
                v.truncate(i);
            }
            _ => {}
        }
    }
    v
}

/// A valid input from `seeds`, with 1 to 8 random edits; one case in sixteen a seed as it is
/// (so the valid path runs too), one in eight random bytes.
pub fn mutations_of(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    assert!(!seeds.is_empty(), "at least one seed");
    let n = seeds.len();
    let (plain, edited) = (seeds.clone(), seeds);
    prop_oneof![
        1 => (0..n).prop_map(move |i| plain[i].clone()),
        13 => (0..n, proptest::collection::vec(edit(), 1..8)).prop_map(move |(i, e)| apply(edited[i].clone(), &e)),
        2 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
    .boxed()
}

/// Text: [`mutations_of`] made UTF-8 (invalid sequences replaced).
pub fn text_mutations_of(seeds: Vec<String>) -> impl Strategy<Value = String> {
    mutations_of(seeds.into_iter().map(String::into_bytes).collect()).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Runs `check` on [`cases`] inputs from `strategy`: a panic (or a failed check) fails the
/// test with the smallest input proptest finds. Prints `fuzz <target>: N inputs, no panic`.
pub fn run<S: Strategy>(target: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), String>)
where
    S::Value: std::fmt::Debug,
{
    let n = cases();
    let counted = std::sync::atomic::AtomicU64::new(0);
    let mut runner = TestRunner::new(Config { cases: n, failure_persistence: None, ..Config::default() });
    let result = runner.run(&strategy, |input| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        check(input).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("fuzz {target}: {e}");
    }
    eprintln!("fuzz {target}: {} inputs, no panic", counted.load(std::sync::atomic::Ordering::Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_stay_in_bounds() {
        let v = b"abcdef".to_vec();
        let all = [Edit::FlipBit(99, 7), Edit::Set(3, b'x'), Edit::Insert(100, vec![1, 2]), Edit::Token(0, 3), Edit::Delete(5, 60), Edit::Duplicate(2, 60), Edit::Truncate(1000)];
        // positions past the end wrap or clamp: no edit panics, on any input
        for start in [v.clone(), Vec::new(), vec![0]] {
            apply(start, &all);
        }
        assert_eq!(apply(v.clone(), &[Edit::Truncate(2)]), b"ab");
        assert_eq!(apply(v.clone(), &[Edit::Delete(4, 60)]), b"abcd");
        assert_eq!(apply(v, &[Edit::Insert(6, vec![b'!'])]), b"abcdef!", "position len appends");
    }
}
