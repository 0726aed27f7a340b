//! Response bodies of exponentially distributed size, as µBench's: `max(1, ⌊1000 · Exp(mean
//! kB)⌋)` bytes. They are cut from buffers built once, so a body costs a reference count, not
//! a per-byte loop (µBench's loader builds its body one random character at a time).

use std::sync::OnceLock;

use bytes::Bytes;
use rand::{Rng, RngExt};

/// Largest body a cell sends, whatever the mean: a 1 GB mean would otherwise exhaust memory.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// Size of the pre-built buffers bodies are cut from.
const BUFFER_BYTES: usize = 1 << 20;

/// Draws a body length in bytes for a mean of `mean_kb` kB (1 kB = 1000 bytes): at least 1,
/// at most [`MAX_BODY_BYTES`].
pub fn body_len<R: Rng + ?Sized>(rng: &mut R, mean_kb: f64) -> usize {
    // Inverse transform: -ln(1 - U) is Exp(1) for U uniform in [0, 1).
    let unit: f64 = rng.random();
    let kb = -mean_kb * (1.0 - unit).ln();
    let bytes = (1000.0 * kb).floor();
    if bytes.is_finite() && bytes >= 1.0 {
        (bytes as usize).min(MAX_BODY_BYTES)
    } else {
        1
    }
}

/// `len` bytes of `m`, as µBench's `compute_pi` answers.
pub fn m_body(len: usize) -> Bytes {
    // Small bodies (the common case) point into a static: no reference count to update.
    static SMALL: [u8; 64 * 1024] = [b'm'; 64 * 1024];
    if len <= SMALL.len() {
        return Bytes::from_static(&SMALL[..len]);
    }
    repeat(filler(&M_BUFFER, || vec![b'm'; BUFFER_BYTES]), 0, len)
}

/// `len` random ASCII letters, as µBench's `loader` answers. Cut at a random offset of a
/// random buffer, so bodies differ without generating new bytes.
pub fn letters_body<R: Rng + ?Sized>(rng: &mut R, len: usize) -> Bytes {
    let buffer = filler(&LETTERS_BUFFER, || {
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut rng = rand::rng();
        (0..BUFFER_BYTES)
            .map(|_| LETTERS[rng.random_range(0..LETTERS.len())])
            .collect()
    });
    let start = rng.random_range(0..BUFFER_BYTES);
    repeat(buffer, start, len)
}

static M_BUFFER: OnceLock<Bytes> = OnceLock::new();
static LETTERS_BUFFER: OnceLock<Bytes> = OnceLock::new();

fn filler(cell: &'static OnceLock<Bytes>, build: impl FnOnce() -> Vec<u8>) -> &'static Bytes {
    cell.get_or_init(|| Bytes::from(build()))
}

/// `len` bytes of `buffer` read cyclically from `start`; zero-copy when they fit.
fn repeat(buffer: &Bytes, start: usize, len: usize) -> Bytes {
    if start + len <= buffer.len() {
        return buffer.slice(start..start + len);
    }
    let mut out = Vec::with_capacity(len);
    let mut at = start;
    while out.len() < len {
        let take = (len - out.len()).min(buffer.len() - at);
        out.extend_from_slice(&buffer[at..at + take]);
        at = 0;
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn lengths_are_exponential_with_the_given_mean() {
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 50_000;
        let lengths: Vec<usize> = (0..n).map(|_| body_len(&mut rng, 10.0)).collect();
        let mean = lengths.iter().sum::<usize>() as f64 / n as f64;
        // Standard error of the mean is 10000/sqrt(50000) ≈ 45 bytes; allow 5 of them.
        assert!((mean - 10_000.0).abs() < 225.0, "mean {mean}");
        // Exponential: P(X > mean) = e^-1 ≈ 0.368.
        let above = lengths.iter().filter(|&&l| l > 10_000).count() as f64 / n as f64;
        assert!((above - 0.368).abs() < 0.02, "tail {above}");
        assert!(lengths.iter().all(|&l| l >= 1));
    }

    #[test]
    fn tiny_or_degenerate_means_give_one_byte_at_least() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(body_len(&mut rng, 0.0), 1);
        assert!((0..1000).all(|_| body_len(&mut rng, 0.0001) == 1));
        assert!(body_len(&mut rng, 1e12) <= MAX_BODY_BYTES);
    }

    #[test]
    fn bodies_have_the_requested_length_and_alphabet() {
        let mut rng = SmallRng::seed_from_u64(3);
        for len in [1, 10, 4096, BUFFER_BYTES + 17, 3 * BUFFER_BYTES] {
            let m = m_body(len);
            assert_eq!(m.len(), len);
            assert!(m.iter().all(|&b| b == b'm'));
            let letters = letters_body(&mut rng, len);
            assert_eq!(letters.len(), len);
            assert!(letters.iter().all(u8::is_ascii_alphabetic));
        }
        assert_ne!(letters_body(&mut rng, 64), letters_body(&mut rng, 64));
    }
}
