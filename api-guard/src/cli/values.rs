//! Parsers of flag values: each takes a string and says in one line what is
//! wrong with it.

use std::time::Duration;

/// An HTTP header name (RFC 9110 token), so that a typo such as
/// "Authorization:" cannot make every credential look missing.
pub fn parse_header_name(s: &str) -> Result<String, String> {
    // "Authorization, X-Api-Key" from the environment: items may be spaced.
    let s = s.trim();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !s.is_empty() && s.bytes().all(token) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an HTTP header name (e.g. Authorization, X-Api-Key)"
        ))
    }
}

/// A fraction from 0 to 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?} is not a ratio from 0 to 1 (e.g. 0.01 for 1%)"
        )),
    }
}

/// A ring buffer size: a power of two of at least one page.
pub fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n >= 4096 && n.is_power_of_two() => Ok(n),
        _ => Err(format!(
            "{s:?} must be a power of two of at least 4096 bytes (e.g. 4194304)"
        )),
    }
}

/// The heartbeat timeout: two beats at least, so one late beat never fails open.
pub fn parse_heartbeat_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d < Duration::from_secs(2) => Err("must be at least 2s".into()),
        d => Ok(d),
    }
}

/// A refresh interval: at least 100ms, so a view never spins on the client map.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d < Duration::from_millis(100) => Err("must be at least 100ms".into()),
        d => Ok(d),
    }
}

/// A duration with a unit that is not zero.
pub fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

/// A duration with a unit ("30s", "5m", "1h 30m"), or a bare 0.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (use a unit, e.g. 30s, 5m, 1h)"))
}

/// A route pattern (`[METHOD ]/path/{param}`), checked here so a bad one is an
/// error before anything is attached.
pub fn parse_route(s: &str) -> Result<String, String> {
    crate::pipeline::routes::check_pattern(s).map_err(|e| e.to_string())
}

/// How long a sampled request waits for its response: 100ms to 1h.
pub fn parse_response_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d < Duration::from_millis(100) => Err("must be at least 100ms".into()),
        d if d > Duration::from_secs(3600) => Err("must be at most 1h".into()),
        d => Ok(d),
    }
}

/// A sample budget: `N` or `N/s`, 1 to 10000000 a second.
pub fn parse_sample_budget(s: &str) -> Result<u32, String> {
    let n = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    match n.parse::<u32>() {
        Ok(n) if (1..=10_000_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a sample budget: N or N/s, 1 to 10000000 a second"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sample_budgets_are_per_second_and_bounded() {
        assert_eq!(parse_sample_budget("10000/s"), Ok(10_000));
        assert_eq!(parse_sample_budget("7"), Ok(7));
        for bad in ["0", "0/s", "-1", "10/m", "x", "10000001/s"] {
            assert!(parse_sample_budget(bad).is_err(), "{bad}");
        }
    }
}
