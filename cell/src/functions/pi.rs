//! Digits of π by the Rabinowitz–Wagon bounded spigot: quadratic time, linear memory, only
//! machine integers. It stands in for µBench's Python big-integer spigot as the unit of CPU
//! work in `computePi` and the `loader` CPU stressor.

/// The first `n` decimal digits of π (`[3, 1, 4, 1, 5, …]`); empty for `n == 0`.
pub fn pi_digits(n: usize) -> Vec<u8> {
    let mut digits = Vec::with_capacity(n);
    if n == 0 {
        return digits;
    }
    // A few guard digits: a digit is only final once the next non-9 digit is known.
    let m = n + 10;
    // Mixed-radix representation of π: one cell per 10/3 digits plus slack.
    let len = m * 10 / 3 + 2;
    let mut cells = vec![2u64; len];
    let mut predigit: Option<u8> = None;
    let mut nines = 0usize;
    for _ in 0..m {
        let mut carry = 0u64;
        // Cell `i` holds the digit of radix (i+1)/(2i+1) in π = 2 + 1/3(2 + 2/5(2 + 3/7(…))).
        for i in (1..len).rev() {
            let k = i as u64;
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
            break;
        }
    }
    digits.truncate(n);
    digits
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
        for n in 1..40 {
            assert_eq!(text(n), digits[..n], "n = {n}");
        }
    }
}
