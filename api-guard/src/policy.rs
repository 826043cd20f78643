//! The policy flags of `api-guard run`, checked and compiled into what the
//! kernel reads: the `CONFIG` entry, the allow and deny lists and the
//! per-network limits ([`PolicyTables`]). Pure: plain values in, plain values out.

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use api_guard_common::{
    config::{Config, Limit, flags},
    network::V4_MAPPED_BITS,
};
use ipnet::IpNet;

use crate::kernel::{LpmKey, PolicyTables};

/// A network given on the command line; a bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network(pub IpNet);

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let net = match s.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match s.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(format!(
                        "{s:?} is not a network (use CIDR notation, e.g. 198.18.0.0/15 or 2001:db8::/32)"
                    ));
                }
            },
        };
        // IPv4 clients are keyed as ::ffff:a.b.c.d: an IPv6 network spanning that
        // range (::/0, say) would silently match every IPv4 client too.
        if let IpNet::V6(v6) = net
            && v6.prefix_len() <= 96
            && v6
                .trunc()
                .contains(&std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0))
        {
            return Err(format!(
                "{s:?} would also match every IPv4 client (IPv4 is kept as ::ffff:0:0/96); give IPv6 networks that leave it out, and IPv4 networks as IPv4"
            ));
        }
        // 198.18.0.1/24 means the network 198.18.0.0/24.
        Ok(Network(net.trunc()))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Network {
    /// The LPM-trie key: IPv4 as IPv4-mapped IPv6, like the kernel's client keys.
    pub fn lpm_key(&self) -> LpmKey {
        match self.0 {
            IpNet::V4(n) => (
                V4_MAPPED_BITS + u32::from(n.prefix_len()),
                n.addr().to_ipv6_mapped().octets(),
            ),
            IpNet::V6(n) => (u32::from(n.prefix_len()), n.addr().octets()),
        }
    }
}

/// `--limit CIDR=RATE[:BURST]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkLimit {
    pub network: Network,
    pub rate: u32,
    pub burst: u32,
}

impl FromStr for NetworkLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (net, spec) = s.split_once('=').ok_or_else(|| {
            format!("{s:?} is not CIDR=RATE[:BURST] (e.g. 198.18.0.0/24=100:200)")
        })?;
        let network: Network = net.parse()?;
        let (rate, burst) = match spec.split_once(':') {
            Some((r, b)) => (positive(r, "rate")?, positive(b, "burst")?),
            None => {
                let r = positive(spec, "rate")?;
                (r, r)
            }
        };
        Ok(NetworkLimit {
            network,
            rate,
            burst,
        })
    }
}

/// A whole number from 1 to 1e9 (the buckets count in nanoseconds).
pub fn positive(s: &str, what: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=1_000_000_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "{what} must be a whole number from 1 to 1000000000, not {s:?}"
        )),
    }
}

/// The `sample_below` threshold of a sampling ratio: the kernel samples when a
/// random u32 is below it (`u32::MAX` meaning always).
pub fn sample_below(ratio: f64) -> u32 {
    if ratio >= 1.0 {
        u32::MAX
    } else if ratio <= 0.0 {
        0
    } else {
        (ratio * f64::from(u32::MAX)) as u32
    }
}

/// What the policy flags ask for, validated.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub rate: Option<u32>,
    pub burst: Option<u32>,
    pub conn_rate: Option<u32>,
    pub conn_burst: Option<u32>,
    pub block_for: Option<Duration>,
    pub max_conns: Option<u32>,
    pub allow: Vec<Network>,
    pub deny: Vec<Network>,
    pub limits: Vec<NetworkLimit>,
    pub ipv6_prefix: u8,
    pub dry_run: bool,
    pub on_limit_reset: bool,
    /// Fraction of request starts sampled for the access log (0 to 1).
    pub sample: f64,
    /// Payload bytes captured per sample.
    pub capture_bytes: u32,
    /// `--require-auth block`: clients without credentials get blocked too.
    pub auth_blocks: bool,
    /// Detectors whose findings block (`--detect NAME=block`), by name.
    pub detect_blocks: Vec<&'static str>,
    /// `--fail-mode open`: stop dropping once the daemon has been silent this
    /// long. None: closed, keep enforcing without a daemon.
    pub fail_open_after: Option<Duration>,
    /// `--trusted-proxy`: peers whose PROXY headers name the client.
    pub trusted_proxies: Vec<Network>,
    /// `--proxy-protocol required`.
    pub proxy_required: bool,
    /// `--trusted-hops`: the client of a trusted peer's request is this many
    /// elements from the right of its forwarded list.
    pub trusted_hops: Option<u32>,
    /// `--forwarded-header forwarded`.
    pub forwarded_rfc7239: bool,
    /// `--sample-wakeup batched`.
    pub sample_wakeup_batched: bool,
    /// `--key-header`, `--key-rate`, `--route-limit`.
    pub keys: api_guard_common::keys::KeyPolicy,
}

impl Policy {
    /// Checks the combinations clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.burst.is_some() && self.rate.is_none() {
            return Err("--burst needs --rate".into());
        }
        if self.conn_burst.is_some() && self.conn_rate.is_none() {
            return Err("--conn-burst needs --conn-rate".into());
        }
        let has_limit = self.rate.is_some() || self.conn_rate.is_some() || !self.limits.is_empty();
        if self.block_for.is_some()
            && !has_limit
            && !self.auth_blocks
            && self.detect_blocks.is_empty()
        {
            return Err(
                "--block-for needs something to block for (--rate, --conn-rate, --limit, --require-auth block or --detect NAME=block)".into(),
            );
        }
        if let Some(name) = self.detect_blocks.first()
            && self.block_for.is_none()
        {
            return Err(format!(
                "--detect {name}=block needs --block-for (how long to block)"
            ));
        }
        if self.auth_blocks && self.block_for.is_none() {
            return Err("--require-auth block needs --block-for (how long to block)".into());
        }
        if self.trusted_hops.is_some() && self.keys.is_active() {
            // The forwarded stage charges a proxy's requests without the key
            // stage: the limits would hold for direct clients and not for
            // anyone behind the proxy. Refused rather than half-applied.
            return Err(
                "--trusted-hops cannot be combined with --key-rate or --route-limit: key and route limits are not applied to requests forwarded by a --trusted-hops proxy (they would be bypassed through it); limit keys and routes at the proxy, or run without --trusted-hops".into(),
            );
        }
        if self.trusted_hops.is_some() && self.trusted_proxies.is_empty() {
            return Err(
                "--trusted-hops needs --trusted-proxy (the peers whose lists are read)".into(),
            );
        }
        if self
            .trusted_hops
            .is_some_and(|h| h == 0 || h > api_guard_common::forwarded::MAX_HOPS)
        {
            return Err(format!(
                "--trusted-hops takes 1 to {}",
                api_guard_common::forwarded::MAX_HOPS
            ));
        }
        if self.proxy_required && self.trusted_proxies.is_empty() {
            return Err(
                "--proxy-protocol required needs --trusted-proxy (the peers that send it)".into(),
            );
        }
        Ok(())
    }

    /// The `CONFIG` entry; `netns_cookie` scopes the connection counting.
    pub fn config(&self, netns_cookie: u64) -> Config {
        let limit = |rate: Option<u32>, burst: Option<u32>| match rate {
            Some(r) => Limit::per_second(u64::from(r), u64::from(burst.unwrap_or(r))),
            None => Limit::NONE,
        };
        let mut f = 0;
        if self.dry_run {
            f |= flags::DRY_RUN;
        }
        if self.sample_wakeup_batched {
            f |= flags::SAMPLE_WAKEUP_BATCHED;
        }
        if self.on_limit_reset {
            f |= flags::ON_LIMIT_RESET;
        }
        if !self.allow.is_empty() {
            f |= flags::HAS_ALLOW;
        }
        if !self.deny.is_empty() {
            f |= flags::HAS_DENY;
        }
        if !self.limits.is_empty() {
            f |= flags::HAS_OVERRIDES;
        }
        if !self.trusted_proxies.is_empty() {
            f |= flags::HAS_TRUSTED_PROXIES;
        }
        if self.proxy_required {
            f |= flags::PROXY_REQUIRED;
        }
        if self.keys.is_active() {
            f |= flags::KEY_LIMITS;
        }
        if self.trusted_hops.is_some() {
            f |= flags::FORWARDED;
            if self.forwarded_rfc7239 {
                f |= flags::FORWARDED_RFC7239;
            }
        }
        Config {
            requests: limit(self.rate, self.burst),
            connections: limit(self.conn_rate, self.conn_burst),
            block_ns: self
                .block_for
                .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX / 2)) as u64),
            max_conns: self.max_conns.map_or(0, u64::from),
            netns_cookie,
            heartbeat_timeout_ns: self.fail_open_after.map_or(0, |d| {
                d.as_nanos().clamp(1, u128::from(u64::MAX / 2)) as u64
            }),
            ipv6_prefix: u32::from(self.ipv6_prefix),
            flags: f,
            sample_below: sample_below(self.sample),
            capture_bytes: self.capture_bytes,
            forwarded_hops: self.trusted_hops.unwrap_or(0),
            _pad: 0,
        }
    }

    /// Everything the policy maps hold: the lists, the per-network limits and
    /// the `CONFIG` entry (`netns_cookie` scopes the connection counting).
    pub fn tables(&self, netns_cookie: u64) -> PolicyTables {
        let keys = |nets: &[Network]| nets.iter().map(Network::lpm_key).collect();
        PolicyTables {
            allow: keys(&self.allow),
            deny: keys(&self.deny),
            limits: self.overrides(),
            trusted_proxies: keys(&self.trusted_proxies),
            keys: self.keys,
            config: self.config(netns_cookie),
        }
    }

    /// The per-network limits as LPM entries.
    pub fn overrides(&self) -> Vec<(LpmKey, Limit)> {
        self.limits
            .iter()
            .map(|l| {
                (
                    l.network.lpm_key(),
                    Limit::per_second(u64::from(l.rate), u64::from(l.burst)),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_both_families_and_bare_addresses() {
        let n: Network = "198.18.0.0/15".parse().unwrap();
        assert_eq!(n.lpm_key().0, 96 + 15);
        assert_eq!(&n.lpm_key().1[10..], &[0xff, 0xff, 198, 18, 0, 0]);
        let n: Network = "2001:db8::/32".parse().unwrap();
        assert_eq!(n.lpm_key().0, 32);
        let n: Network = "198.18.0.7".parse().unwrap();
        assert_eq!(n.to_string(), "198.18.0.7/32");
        // Host bits are cleared.
        let n: Network = "198.18.3.7/24".parse().unwrap();
        assert_eq!(n.to_string(), "198.18.3.0/24");
        for bad in [
            "198.18.0.0/33",
            "nonsense",
            "2001:db8::/129",
            "",
            "::/0",
            "::ffff:0:0/96",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn network_limits() {
        let l: NetworkLimit = "198.18.0.0/24=100:200".parse().unwrap();
        assert_eq!((l.rate, l.burst), (100, 200));
        let l: NetworkLimit = "2001:db8::/48=5".parse().unwrap();
        assert_eq!((l.rate, l.burst), (5, 5));
        for bad in [
            "198.18.0.0/24",
            "198.18.0.0/24=0",
            "198.18.0.0/24=10:0",
            "x=1",
            "198.18.0.0/24=1:",
        ] {
            assert!(bad.parse::<NetworkLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_reflects_the_flags() {
        let p = Policy {
            rate: Some(10),
            burst: Some(20),
            block_for: Some(Duration::from_secs(2)),
            deny: vec!["198.18.9.0/24".parse().unwrap()],
            ipv6_prefix: 64,
            ..Default::default()
        };
        p.validate().unwrap();
        let c = p.config(7);
        assert_eq!(c.requests, Limit::per_second(10, 20));
        assert_eq!(c.requests.burst_ns, 2_000_000_000);
        assert!(!c.connections.is_set());
        assert_eq!(c.block_ns, 2_000_000_000);
        assert_eq!(c.flags, flags::HAS_DENY);
        assert_eq!((c.netns_cookie, c.ipv6_prefix), (7, 64));
        assert_eq!(c.heartbeat_timeout_ns, 0, "closed unless told open");
        let open = Policy {
            fail_open_after: Some(Duration::from_secs(15)),
            ..p
        };
        assert_eq!(open.config(7).heartbeat_timeout_ns, 15_000_000_000);
    }

    #[test]
    fn trusted_proxies_become_a_table_and_flags() {
        let required_alone = Policy {
            proxy_required: true,
            ..Default::default()
        };
        assert!(
            required_alone
                .validate()
                .unwrap_err()
                .contains("--trusted-proxy")
        );
        let p = Policy {
            trusted_proxies: vec![
                "198.18.0.10".parse().unwrap(),
                "2001:db8::/48".parse().unwrap(),
            ],
            proxy_required: true,
            ipv6_prefix: 64,
            ..Default::default()
        };
        p.validate().unwrap();
        let t = p.tables(0);
        assert_eq!(
            t.config.flags,
            flags::HAS_TRUSTED_PROXIES | flags::PROXY_REQUIRED
        );
        assert_eq!(t.trusted_proxies.len(), 2);
        // IPv4 as IPv4-mapped, like the kernel's client keys.
        assert_eq!(t.trusted_proxies[0].0, 128);
        assert_eq!(t.trusted_proxies[1].0, 48);
        let optional = Policy {
            proxy_required: false,
            ..p
        };
        assert_eq!(optional.config(0).flags, flags::HAS_TRUSTED_PROXIES);
    }

    #[test]
    fn combinations_are_checked() {
        let burst_alone = Policy {
            burst: Some(5),
            ..Default::default()
        };
        assert!(burst_alone.validate().unwrap_err().contains("--rate"));
        let block_alone = Policy {
            block_for: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        assert!(block_alone.validate().is_err());
    }
}
