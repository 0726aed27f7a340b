//! Digits of π by the Rabinowitz–Wagon bounded spigot: quadratic time, linear memory, only
//! machine integers. It stands in for µBench's Python big-integer spigot as the unit of CPU
//! work in `computePi` and the `loader` CPU stressor.

/// The first `n` decimal digits of π (`[3, 1, 4, 1, 5, …]`); empty for `n == 0`.
pub fn pi_digits(n: usize) -> Vec<u8> {
    // A digit is final only once the next non-9 digit is known, so the precision must reach
    // past the run of 9s that follows digit `n`. Start with a small guard (cheap for the tiny
    // counts of µBench's trivial benchmarks) and widen it in the rare case a run of 9s
    // outlasts it (six 9s at the Feynman point, digit 762).
    let mut guard = 2;
    loop {
        if let Some(digits) = spigot(n, guard) {
            return digits;
        }
        guard *= 4;
    }
}

/// `n` digits computed with `guard` digits of extra precision, or `None` when a run of 9s
/// reaches beyond that precision.
fn spigot(n: usize, guard: usize) -> Option<Vec<u8>> {
    let mut digits = Vec::with_capacity(n);
    if n == 0 {
        return Some(digits);
    }
    // Precision of `m` digits needs ⌊10m/3⌋ + 1 cells (Rabinowitz & Wagon); one more for slack.
    let m = n + guard;
    let len = m * 10 / 3 + 2;
    // 32-bit arithmetic suffices and divides about twice as fast as 64-bit: a cell holds less
    // than 2i+1 and the carry stays below ~20 (each step at most 10 + half the incoming
    // carry), so x < 40·len, far below u32::MAX for any `len` that fits in memory.
    debug_assert!(len < (u32::MAX / 64) as usize, "π digit count out of range");
    let mut cells = vec![2u32; len];
    let mut predigit: Option<u8> = None;
    let mut nines = 0usize;
    // Each round yields one pre-digit; within `m` rounds they are exact.
    for _ in 0..m {
        let mut carry = 0u32;
        // Cell `i` holds the digit of radix (i+1)/(2i+1) in π = 2 + 1/3(2 + 2/5(2 + 3/7(…))).
        for i in (1..len).rev() {
            let k = i as u32;
            let x = cells[i] * 10 + carry * (k + 1);
            let denominator = 2 * k + 1;
            cells[i] = x % denominator;
            carry = x / denominator;
        }
        let x = cells[0] * 10 + carry;
        cells[0] = x % 10;
        let q = (x / 10) as u8;
        match q {
            9 => nines += 1,
            10 => {
                if let Some(p) = predigit {
                    digits.push(p + 1);
                }
                digits.extend(std::iter::repeat_n(0, nines));
                predigit = Some(0);
                nines = 0;
            }
            _ => {
                if let Some(p) = predigit {
                    digits.push(p);
                }
                digits.extend(std::iter::repeat_n(9, nines));
                predigit = Some(q);
                nines = 0;
            }
        }
        if digits.len() >= n {
            digits.truncate(n);
            return Some(digits);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> String {
        pi_digits(n).iter().map(|d| char::from(b'0' + d)).collect()
    }

    #[test]
    fn first_hundred_digits() {
        assert_eq!(
            text(100),
            "3141592653589793238462643383279502884197169399375105820974944592307816406286208998628034825342117067"
        );
    }

    #[test]
    fn handles_runs_of_nines_and_small_counts() {
        // Digits 762–767 are the Feynman point "999999"; the spigot must carry through it.
        let digits = text(1000);
        assert_eq!(&digits[762..768], "999999");
        assert_eq!(
            &digits[950..],
            "81857780532171226806613001927876611195909216420198"
        );
        assert_eq!(
            pi_digits(1000).iter().map(|&d| u32::from(d)).sum::<u32>(),
            4470
        );
        assert_eq!(text(0), "");
        assert_eq!(text(1), "3");
        assert_eq!(text(2), "31");
        // Small counts, and counts whose next digits are the run of six 9s (the guard must
        // widen there).
        for n in (1..40).chain(755..775) {
            assert_eq!(text(n), digits[..n], "n = {n}");
        }
        assert_eq!(spigot(762, 2), None, "a guard of 2 cannot see past six 9s");
    }
}
