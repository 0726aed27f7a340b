//! Kubernetes quantities as numbers: `250m` → 0.25, `512Mi` → 536870912, `1e3` → 1000.
//!
//! The Guardian compares usage with limits and computes new limits, the node agent turns
//! limits into cgroup values: both need the number behind a [`Quantity`]. Parsing follows
//! `k8s.io/apimachinery/pkg/api/resource`: an optional sign, a decimal number, then a binary
//! suffix (`Ki` … `Ei`), a decimal suffix (`n`, `u`, `m`, `k`, `M` … `E`) or a decimal
//! exponent (`e3`, `E-2`). Formatting writes the canonical forms Kubernetes prints for CPU
//! (`1250m`, `2`) and memory (`384Mi`, `1536Ki`, bytes).

use std::fmt;

use crate::service::Quantity;

/// Why a quantity could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a quantity ({reason}); examples: 250m, 2, 512Mi, 1e3")]
pub struct QuantityError {
    /// The text that was given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Quantity {
    /// The value in base units: cores for CPU, bytes for memory.
    pub fn value(&self) -> Result<f64, QuantityError> {
        parse(&self.0)
    }
}

/// Parses a quantity into its value in base units.
pub fn parse(text: &str) -> Result<f64, QuantityError> {
    let error = |reason| QuantityError {
        text: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(error("empty"));
    }
    let number_end = trimmed
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '+' || c == '-'))))
        .map_or(trimmed.len(), |(i, _)| i);
    let (number, suffix) = trimmed.split_at(number_end);
    if !number.bytes().any(|b| b.is_ascii_digit()) {
        return Err(error("no number"));
    }
    let base: f64 = number.parse().map_err(|_| error("malformed number"))?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..]
                .parse()
                .map_err(|_| error("malformed exponent"))?;
            10f64.powi(power)
        }
        _ => return Err(error("unknown suffix")),
    };
    Ok(base * multiplier)
}

/// CPU in Kubernetes' canonical form, rounded up to whole millicores: `2`, `1250m`, `1m`.
pub fn cpu(cores: f64) -> Quantity {
    // The slack keeps a value computed as 1.771 (and stored as 1.7710000000000001) at 1771m.
    let millis = (cores * 1000.0 - 1e-6).ceil().max(0.0) as u64;
    Quantity(if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    })
}

/// Memory in Kubernetes' canonical binary form, rounded up to whole bytes: `1Gi`, `384Mi`,
/// `1536Ki`, `1000`.
pub fn memory(bytes: f64) -> Quantity {
    let bytes = (bytes - 1e-6).ceil().max(0.0) as u64;
    Quantity(Binary(bytes).to_string())
}

struct Binary(u64);

impl fmt::Display for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SUFFIXES: [&str; 6] = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"];
        let value = self.0;
        if value == 0 {
            return f.write_str("0");
        }
        for (i, suffix) in SUFFIXES.iter().enumerate() {
            let unit = 1u64 << (10 * (SUFFIXES.len() - i));
            if value.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", value / unit);
            }
        }
        write!(f, "{value}")
    }
}

/// Memory rounded up to whole mebibytes, the granularity the Guardian sets limits at (so a
/// limit never ends in odd bytes that nobody would write by hand).
pub fn memory_mebibytes(bytes: f64) -> Quantity {
    const MI: f64 = 1024.0 * 1024.0;
    memory((bytes / MI).ceil() * MI)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn parses_every_suffix_kind() {
        for (text, want) in [
            ("250m", 0.25),
            ("2", 2.0),
            ("1.5", 1.5),
            ("100n", 1e-7),
            ("5u", 5e-6),
            ("1k", 1000.0),
            ("3M", 3e6),
            ("1G", 1e9),
            ("512Mi", 536_870_912.0),
            ("1Gi", 1_073_741_824.0),
            ("64Ki", 65_536.0),
            ("1e3", 1000.0),
            ("5E-2", 0.05),
            ("+2", 2.0),
            ("-250m", -0.25),
            (" 1Ti ", 1_099_511_627_776.0),
        ] {
            let got = parse(text).unwrap();
            assert!(close(got, want), "{text}: {got} != {want}");
        }
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for (text, reason) in [
            ("", "empty"),
            ("Mi", "no number"),
            ("1.2.3", "malformed number"),
            ("12Q", "unknown suffix"),
            ("1mi", "unknown suffix"),
            ("1ex", "malformed exponent"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.reason, reason, "{text}");
            assert!(err.to_string().contains("examples"), "{err}");
        }
        assert!(Quantity("lots".into()).value().is_err());
    }

    #[test]
    fn formats_cpu_canonically_rounding_up() {
        assert_eq!(cpu(2.0).0, "2");
        assert_eq!(cpu(1.25).0, "1250m");
        assert_eq!(cpu(0.0001).0, "1m");
        assert_eq!(cpu(0.7501).0, "751m");
        assert_eq!(cpu(0.0).0, "0");
        assert_eq!(cpu(1.7710000000000001).0, "1771m");
    }

    #[test]
    fn formats_memory_in_the_largest_exact_binary_unit() {
        assert_eq!(memory(1_073_741_824.0).0, "1Gi");
        assert_eq!(memory(384.0 * 1024.0 * 1024.0).0, "384Mi");
        assert_eq!(memory(1536.0 * 1024.0).0, "1536Ki");
        assert_eq!(memory(1000.0).0, "1000");
        assert_eq!(memory_mebibytes(100.5 * 1024.0 * 1024.0).0, "101Mi");
        assert_eq!(memory_mebibytes(2.0 * 1024.0 * 1024.0 * 1024.0).0, "2Gi");
    }

    #[test]
    fn formatting_round_trips_through_parsing() {
        for cores in [0.001, 0.25, 1.0, 3.75, 16.0] {
            assert!(close(cpu(cores).value().unwrap(), cores), "{cores}");
        }
        for bytes in [1024.0, 65_536.0, 536_870_912.0, 3.0 * 1_073_741_824.0] {
            assert!(close(memory(bytes).value().unwrap(), bytes), "{bytes}");
        }
    }
}
