//! Per-request deadlines from request metadata, for the REST and gRPC layers.
//!
//! Contract: [`from_timeout_header`] reads `x-request-timeout` (whole milliseconds, as
//! Cocaine's `request_timeout` header); [`from_grpc_timeout`] reads gRPC's `grpc-timeout`
//! (`<digits><unit>`, unit one of `H M S m u n`, at most 8 digits, per the gRPC HTTP/2
//! spec). Both reject garbage with a message naming the header, so the caller can answer
//! 400 / `INVALID_ARGUMENT`; a zero timeout is refused (it could never be met).

use std::time::Duration;

/// Parse an `x-request-timeout` header value (milliseconds).
pub fn from_timeout_header(value: &str) -> Result<Duration, String> {
    let ms: u64 = value.trim().parse().map_err(|_| {
        format!("x-request-timeout must be a whole number of milliseconds, found {value:?}")
    })?;
    if ms == 0 {
        return Err("x-request-timeout must be positive".to_owned());
    }
    Ok(Duration::from_millis(ms))
}

/// Parse a `grpc-timeout` header value such as `100m` or `5S`.
pub fn from_grpc_timeout(value: &str) -> Result<Duration, String> {
    let bad =
        || format!("grpc-timeout must be 1-8 digits and a unit (H M S m u n), found {value:?}");
    let value = value.trim();
    let split = value.len().checked_sub(1).ok_or_else(bad)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    if timeout.is_zero() {
        return Err("grpc-timeout must be positive".to_owned());
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_timeout_header() {
        assert_eq!(from_timeout_header("250"), Ok(Duration::from_millis(250)));
        assert_eq!(from_timeout_header(" 1000 "), Ok(Duration::from_secs(1)));
        assert!(from_timeout_header("0").unwrap_err().contains("positive"));
        assert!(
            from_timeout_header("1.5")
                .unwrap_err()
                .contains("x-request-timeout")
        );
        assert!(from_timeout_header("-3").is_err());
    }

    #[test]
    fn parses_grpc_timeout() {
        assert_eq!(from_grpc_timeout("100m"), Ok(Duration::from_millis(100)));
        assert_eq!(from_grpc_timeout("5S"), Ok(Duration::from_secs(5)));
        assert_eq!(from_grpc_timeout("2M"), Ok(Duration::from_secs(120)));
        assert_eq!(from_grpc_timeout("1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(from_grpc_timeout("7u"), Ok(Duration::from_micros(7)));
        assert_eq!(from_grpc_timeout("9n"), Ok(Duration::from_nanos(9)));
        for bad in ["", "m", "100", "123456789m", "10x", "1.5S", "0S"] {
            assert!(from_grpc_timeout(bad).is_err(), "{bad:?}");
        }
    }
}
