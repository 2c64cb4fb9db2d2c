//! `Retry-After` as servers send it (RFC 9110 §10.2.3): delay-seconds or an HTTP-date, plus
//! the millisecond headers Azure services add (`retry-after-ms`, `x-ms-retry-after-ms`).
//!
//! Parsing never fails loudly: a value that is neither form is ignored (the configured default
//! applies), and nothing here caps; the client caps every wait at `throttle.max_retry_after`.

use std::time::{Duration, SystemTime};

/// Parses one `Retry-After` value. An HTTP-date in the past is a zero wait.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use keyvault_failover_core::retry_after::parse_retry_after;
/// let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
/// assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
/// assert_eq!(
///     parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
///     Some(Duration::from_secs(30))
/// );
/// assert_eq!(parse_retry_after("18446744073709551615", now), Some(Duration::from_secs(u64::MAX)));
/// assert_eq!(parse_retry_after("soon", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() || v.len() > 64 {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: delay-seconds. Beyond u64 it is "very long", not an error.
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses a millisecond header value (`retry-after-ms`, `x-ms-retry-after-ms`): digits only,
/// at most 32 of them; anything else is `None`. For a `SecretStore`
/// backend that reads the header itself.
///
/// ```
/// use std::time::Duration;
/// use keyvault_failover_core::retry_after::parse_retry_after_ms;
/// assert_eq!(parse_retry_after_ms("1500"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_retry_after_ms("-1"), None);
/// ```
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_millis(v.parse::<u64>().unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_header_value_parses_or_is_ignored(s in ".{0,80}") {
            let _ = parse_retry_after(&s, SystemTime::now());
            let _ = parse_retry_after_ms(&s);
        }
    }

    #[test]
    fn every_form() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after(" 5 ", now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past"
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(
            parse_retry_after_ms("250"),
            Some(Duration::from_millis(250))
        );
    }
}
