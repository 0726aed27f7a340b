//! Kubernetes resource quantities (`500m`, `1.5`, `128Mi`, `1e3`), parsed exactly enough to
//! compare them: `"1"` equals `"1000m"`, `"1Gi"` exceeds `"1G"`.
//!
//! A [`Quantity`] holds its value in nano-units (10⁻⁹) as an `i128`, rounding up like
//! Kubernetes does when a value is more precise than it can hold; the largest quantity
//! Kubernetes accepts (2⁶³ − 1) fits with room to spare. Only comparison is offered: the
//! API server never needs to print a canonical form.

use std::fmt;

/// A parsed quantity, comparable by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    nanos: i128,
}

/// Why a string is not a quantity (Kubernetes' wording).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError(String);

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quantities must match the regular expression \
             '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' ({:?})",
            self.0
        )
    }
}

impl std::error::Error for QuantityError {}

impl Quantity {
    /// Parses a quantity as Kubernetes writes them.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let bad = || QuantityError(text.to_owned());
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(bad());
        }
        let digits = format!("{whole}{fraction}");
        let mantissa: i128 = digits.parse().map_err(|_| bad())?;
        let scale = i32::try_from(fraction.len()).map_err(|_| bad())?;
        let nanos = match suffix {
            "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
                let power = match suffix {
                    "Ki" => 10,
                    "Mi" => 20,
                    "Gi" => 30,
                    "Ti" => 40,
                    "Pi" => 50,
                    _ => 60,
                };
                let scaled = mantissa
                    .checked_mul(1_i128 << power)
                    .and_then(|v| v.checked_mul(1_000_000_000))
                    .ok_or_else(bad)?;
                div_ceil(
                    scaled,
                    10_i128.checked_pow(scale.unsigned_abs()).ok_or_else(bad)?,
                )
            }
            _ => {
                let exponent = match suffix {
                    "n" => -9,
                    "u" => -6,
                    "m" => -3,
                    "" => 0,
                    "k" => 3,
                    "M" => 6,
                    "G" => 9,
                    "T" => 12,
                    "P" => 15,
                    "E" => 18,
                    _ => {
                        let exp = suffix
                            .strip_prefix(['e', 'E'])
                            .ok_or_else(bad)?
                            .parse::<i32>()
                            .map_err(|_| bad())?;
                        if !(-30..=30).contains(&exp) {
                            return Err(bad());
                        }
                        exp
                    }
                };
                let shift = exponent + 9 - scale;
                if shift >= 0 {
                    mantissa
                        .checked_mul(10_i128.checked_pow(shift.unsigned_abs()).ok_or_else(bad)?)
                        .ok_or_else(bad)?
                } else {
                    div_ceil(
                        mantissa,
                        10_i128.checked_pow(shift.unsigned_abs()).ok_or_else(bad)?,
                    )
                }
            }
        };
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// The value in milli-units, rounded up (`250m` CPU → 250).
    pub fn millis(self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    /// The value in whole units, rounded up (`64Mi` memory → 67108864, `1500m` CPU → 2).
    pub fn units(self) -> i128 {
        div_ceil(self.nanos, 1_000_000_000)
    }

    /// Below zero: Kubernetes accepts negative quantities in general, never as resources.
    pub fn is_negative(self) -> bool {
        self.nanos < 0
    }

    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }
}

fn div_ceil(value: i128, by: i128) -> i128 {
    let quotient = value / by;
    if value % by > 0 {
        quotient + 1
    } else {
        quotient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        Quantity::parse(text).unwrap()
    }

    #[test]
    fn equal_values_in_different_forms_compare_equal() {
        assert_eq!(q("1"), q("1000m"));
        assert_eq!(q("0.5"), q("500m"));
        assert_eq!(q("1k"), q("1e3"));
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("1.5Gi"), q("1536Mi"));
        assert_eq!(q("+2"), q("2"));
    }

    #[test]
    fn ordering_follows_the_value() {
        assert!(q("1Gi") > q("1G"));
        assert!(q("250m") < q("0.3"));
        assert!(q("-1") < q("0"));
        assert!(q("128Mi") < q("256Mi"));
        assert_eq!(q("250m").millis(), 250);
        assert_eq!(q("2").millis(), 2000);
        assert!(q("0").is_zero());
    }

    #[test]
    fn more_precision_than_nano_rounds_up() {
        assert_eq!(q("0.1n"), q("1n"));
    }

    #[test]
    fn whole_units_and_millis_round_up() {
        assert_eq!(q("64Mi").units(), 64 << 20);
        assert_eq!(q("1500m").units(), 2);
        assert_eq!(q("1e3").units(), 1000);
        assert_eq!(q("0.5").millis(), 500);
        assert_eq!(q("1n").millis(), 1);
        assert!(q("-1").is_negative() && !q("0").is_negative());
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for bad in ["", "m", "1.2.3", "1X", "1Mii", "abc", "1e", "--1", "1e99"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} parsed");
        }
        let err = Quantity::parse("1X").unwrap_err().to_string();
        assert!(
            err.contains("quantities must match the regular expression"),
            "{err}"
        );
    }
}
