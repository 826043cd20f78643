//! The fleet flags of `run`: one per-client budget and one block list shared by
//! the daemons of many hosts through Redis (see `daemon::fleet`). Plain values
//! out; the Redis client itself stays behind `sinks::fleet`.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse_duration;

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Share a budget and the block list with the other hosts through this
    /// Redis: redis://[USER:PASSWORD@]HOST:PORT[/DB], or rediss:// for TLS.
    /// Put a password in API_GUARD_FLEET (the environment file), not on the
    /// command line.
    #[arg(long = "fleet", value_name = "URL", help_heading = "Fleet", value_parser = parse_fleet_url)]
    pub fleet_url: Option<String>,

    /// Prefix of the fleet's Redis keys: the hosts of one API share a name,
    /// other APIs on the same Redis use others.
    #[arg(long = "fleet-name", value_name = "NAME", default_value = "api-guard",
          help_heading = "Fleet", requires = "fleet_url", value_parser = parse_fleet_name)]
    pub fleet_name: String,

    /// Requests per second per client across the whole fleet, with bursts of
    /// BURST [default: the rate]: a window of BURST/N seconds holds BURST
    /// requests; a client over it is blocked on every host until the window
    /// ends.
    #[arg(long = "fleet-rate", value_name = "N[:BURST]", help_heading = "Fleet",
          requires = "fleet_url", value_parser = parse_fleet_rate)]
    pub fleet_rate: Option<FleetRate>,

    /// How often each daemon sends its clients' counts and reads the fleet's
    /// verdicts (the overshoot grows with it; see the README).
    #[arg(long = "fleet-sync", value_name = "DURATION", default_value = "250ms",
          help_heading = "Fleet", requires = "fleet_url", value_parser = parse_fleet_sync)]
    pub fleet_sync: Duration,

    /// Hosts in the fleet: while Redis does not answer, each enforces
    /// --fleet-rate divided by this (--fleet-fallback share).
    #[arg(long = "fleet-hosts", value_name = "N", help_heading = "Fleet", requires = "fleet_url",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub fleet_hosts: Option<u32>,

    /// While Redis does not answer: share, each host enforces its share of
    /// --fleet-rate (rate / --fleet-hosts); whole, each host enforces all of
    /// --fleet-rate (the fleet may then serve a client hosts × the rate).
    #[arg(long = "fleet-fallback", value_name = "MODE", value_enum, default_value_t = FleetFallback::Share,
          help_heading = "Fleet", requires = "fleet_url")]
    pub fleet_fallback: FleetFallback,
}

/// `--fleet-rate N[:BURST]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetRate {
    pub rate: u32,
    pub burst: u32,
}

impl FleetRate {
    /// The fleet's counting window: BURST/N seconds, the time the budget takes
    /// to refill.
    pub fn window(&self) -> Duration {
        Duration::from_millis(u64::from(self.burst) * 1000 / u64::from(self.rate))
    }

    /// The local limit (rate, burst) when each of `hosts` takes its share,
    /// rounded up and never zero.
    pub fn share(&self, hosts: u32) -> (u32, u32) {
        (self.rate.div_ceil(hosts), self.burst.div_ceil(hosts))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FleetFallback {
    Share,
    Whole,
}

/// What the daemon's fleet task is given: the flags, checked together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    pub url: String,
    pub name: String,
    pub rate: Option<FleetRate>,
    pub sync: Duration,
    /// The local limit (rate, burst) while Redis answers: all of the fleet
    /// rate on each host (it bounds a host's share of the overshoot).
    pub normal: Option<(u32, u32)>,
    /// The local limit while it does not.
    pub fallback: Option<(u32, u32)>,
}

impl FleetArgs {
    /// The fleet's settings, None without --fleet; an error for combinations
    /// clap cannot check.
    pub fn config(&self) -> Result<Option<FleetConfig>, String> {
        let Some(url) = &self.fleet_url else {
            return Ok(None);
        };
        let (normal, fallback) = match self.fleet_rate {
            None => (None, None),
            Some(r) => {
                if r.window() < self.fleet_sync {
                    return Err(format!(
                        "--fleet-rate {}:{} makes a window of {:?}, shorter than --fleet-sync {:?}: raise the burst (the window is BURST/N seconds) or sync more often",
                        r.rate,
                        r.burst,
                        r.window(),
                        self.fleet_sync
                    ));
                }
                let fallback = match (self.fleet_fallback, self.fleet_hosts) {
                    (FleetFallback::Whole, _) => (r.rate, r.burst),
                    (FleetFallback::Share, Some(h)) => r.share(h),
                    (FleetFallback::Share, None) => {
                        return Err("--fleet-rate needs --fleet-hosts N (each host's share while Redis does not answer), or --fleet-fallback whole".into());
                    }
                };
                (Some((r.rate, r.burst)), Some(fallback))
            }
        };
        Ok(Some(FleetConfig {
            url: url.clone(),
            name: self.fleet_name.clone(),
            rate: self.fleet_rate,
            sync: self.fleet_sync,
            normal,
            fallback,
        }))
    }
}

impl super::RunArgs {
    /// The fleet's settings with the local limits made no looser than --rate
    /// (None without --fleet).
    pub fn fleet(&self) -> Result<Option<FleetConfig>, String> {
        let Some(mut fleet) = self.fleet.config()? else {
            return Ok(None);
        };
        let own = self.rate.map(|r| (r, self.burst.unwrap_or(r)));
        let tighter = |l: Option<(u32, u32)>| {
            l.map(|(r, b)| match own {
                Some((or, ob)) => (r.min(or), b.min(ob)),
                None => (r, b),
            })
        };
        fleet.normal = tighter(fleet.normal);
        fleet.fallback = tighter(fleet.fallback);
        Ok(Some(fleet))
    }
}

/// A Redis URL: redis:// or rediss://, a host, an optional port and database.
/// (The Redis client checks the rest when the daemon starts.)
pub fn parse_fleet_url(s: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "{why} (use redis://HOST:PORT[/DB], or rediss:// for TLS; e.g. redis://10.0.0.5:6379/0)"
        ))
    };
    let Some(rest) = s
        .strip_prefix("redis://")
        .or_else(|| s.strip_prefix("rediss://"))
    else {
        return bad("the fleet URL must start with redis:// or rediss://");
    };
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.strip_prefix('[') {
        // [2001:db8::5]:6379
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').unwrap_or(p)),
            None => return bad("an IPv6 host needs its closing ]"),
        },
        None => hostport.split_once(':').unwrap_or((hostport, "")),
    };
    if host.is_empty() {
        return bad("the fleet URL has no host");
    }
    if !port.is_empty() && !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return bad(&format!("{port:?} is not a port"));
    }
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return bad(&format!("{db:?} is not a database number"));
    }
    Ok(s.to_owned())
}

/// Letters, digits, `-`, `_`, `.` and `:`, at most 64: it goes into every key.
pub fn parse_fleet_name(s: &str) -> Result<String, String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-_.:".contains(&b);
    if !s.is_empty() && s.len() <= 64 && s.bytes().all(ok) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a fleet name (1 to 64 letters, digits, -, _, . or :)"
        ))
    }
}

/// `N[:BURST]`, each from 1 to 1e9.
pub fn parse_fleet_rate(s: &str) -> Result<FleetRate, String> {
    let (rate, burst) = match s.split_once(':') {
        Some((r, b)) => (
            crate::policy::positive(r, "rate")?,
            crate::policy::positive(b, "burst")?,
        ),
        None => {
            let r = crate::policy::positive(s, "rate")?;
            (r, r)
        }
    };
    Ok(FleetRate { rate, burst })
}

/// A sync interval from 50ms to 60s.
pub fn parse_fleet_sync(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d < Duration::from_millis(50) => Err("must be at least 50ms".into()),
        d if d > Duration::from_secs(60) => Err("must be at most 60s".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in [
            "redis://198.18.0.1:6379",
            "redis://198.18.0.1",
            "redis://redis.example:6379/3",
            "rediss://user:secret@redis.example:6380/0",
            "redis://[2001:db8::5]:6379/1",
        ] {
            assert_eq!(parse_fleet_url(good).as_deref(), Ok(good));
        }
        for bad in [
            "http://198.18.0.1:6379",
            "198.18.0.1:6379",
            "redis://",
            "redis://:6379",
            "redis://h:0",
            "redis://h:port",
            "redis://h:6379/x",
            "redis://[2001:db8::5:6379",
        ] {
            assert!(parse_fleet_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_windows_and_shares() {
        let r = parse_fleet_rate("20:40").unwrap();
        assert_eq!(r.window(), Duration::from_secs(2));
        assert_eq!(r.share(3), (7, 14));
        let r = parse_fleet_rate("5").unwrap();
        assert_eq!(
            (r.rate, r.burst, r.window()),
            (5, 5, Duration::from_secs(1))
        );
        for bad in ["0", "5:0", "x", "5:", ":5", "-1"] {
            assert!(parse_fleet_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_syncs() {
        assert!(parse_fleet_name("shop-api.eu:1").is_ok());
        for bad in ["", "a b", "a*", &"x".repeat(65)] {
            assert!(parse_fleet_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_fleet_sync("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["10ms", "2m", "250"] {
            assert!(parse_fleet_sync(bad).is_err(), "{bad}");
        }
    }
}
