//! What userspace adds to [`super`]: `aya::Pod` for the map types, and the
//! parsing of `--route-limit` and `--key-header` into a [`KeyPolicy`].

extern crate std;

use std::{format, string::String, vec::Vec};

use super::{
    BucketKey, FOLD_SCHEME, KeyParse, KeyPolicy, METHOD_MAX, NAME_MAX, PREFIX_MAX, ROUTE_SLOTS,
    Route, RouteTables,
};
use crate::config::Limit;

// SAFETY: `#[repr(C)]` integers and byte arrays, padding explicit (sizes checked
// by a test).
unsafe impl aya::Pod for KeyPolicy {}
// SAFETY: as above.
unsafe impl aya::Pod for BucketKey {}
// SAFETY: as above.
unsafe impl aya::Pod for KeyParse {}

/// One `--route-limit 'METHOD /prefix=RATE[:BURST]'`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteLimit {
    /// `*` for any method.
    pub method: String,
    pub prefix: String,
    pub rate: u32,
    pub burst: u32,
}

impl core::str::FromStr for RouteLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("route limit {s:?}: {why} (want 'METHOD /path/prefix=RATE[:BURST]')")
        };
        let (route, rate) = s.rsplit_once('=').ok_or_else(|| bad("no '='"))?;
        let (method, prefix) = route
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("no space between method and path"))?;
        let prefix = prefix.trim();
        if method.is_empty()
            || method.len() > METHOD_MAX
            || !(method == "*" || method.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(bad(&format!(
                "the method must be upper-case letters (at most {METHOD_MAX}) or *"
            )));
        }
        if !prefix.starts_with('/') || prefix.len() > PREFIX_MAX {
            return Err(bad(&format!(
                "the path must start with / and be at most {PREFIX_MAX} bytes"
            )));
        }
        if prefix
            .bytes()
            .any(|b| matches!(b, b'?' | b'#' | b'%' | b'\\' | b';') || b <= b' ' || b >= 0x7f)
            || prefix.contains("//")
            || prefix.split('/').any(|seg| seg == "." || seg == "..")
        {
            return Err(bad(
                "the path must be plain (no query, fragment, percent-encoding, ';', empty or dot segment, space or control)",
            ));
        }
        let (rate, burst) = parse_rate(rate.trim()).map_err(|e| bad(&e))?;
        Ok(RouteLimit {
            method: method.into(),
            prefix: prefix.into(),
            rate,
            burst,
        })
    }
}

impl core::fmt::Display for RouteLimit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} {}={}:{}",
            self.method, self.prefix, self.rate, self.burst
        )
    }
}

/// `N[:BURST]`, both positive; the burst defaults to the rate.
pub fn parse_rate(s: &str) -> Result<(u32, u32), String> {
    let positive = |v: &str, what: &str| -> Result<u32, String> {
        match v.parse::<u32>() {
            Ok(n) if n > 0 && n <= 1_000_000_000 => Ok(n),
            _ => Err(format!(
                "{what} {v:?} must be a whole number from 1 to 1000000000"
            )),
        }
    };
    match s.split_once(':') {
        Some((r, b)) => Ok((positive(r, "rate")?, positive(b, "burst")?)),
        None => {
            let r = positive(s, "rate")?;
            Ok((r, r))
        }
    }
}

impl RouteLimit {
    pub fn route(&self) -> Route {
        let mut r = Route::EMPTY;
        r.limit = Limit::per_second(u64::from(self.rate), u64::from(self.burst));
        if self.method != "*" {
            r.method[..self.method.len()].copy_from_slice(self.method.as_bytes());
            r.method_len = self.method.len() as u8;
        }
        r.prefix[..self.prefix.len()].copy_from_slice(self.prefix.as_bytes());
        r.prefix_len = self.prefix.len() as u8;
        r
    }

    /// The same route (a later limit replaces it).
    pub fn same_route(&self, other: &RouteLimit) -> bool {
        self.method == other.method && self.prefix == other.prefix
    }
}

/// A `--key-header` name: a header token, at most [`NAME_MAX`] - 1 bytes.
pub fn parse_key_header(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() < NAME_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "key header {s:?}: a header name (letters, digits, '-'), at most {} bytes",
            NAME_MAX - 1
        ))
    }
}

impl KeyPolicy {
    /// The policy of these flags. Routes are ordered most specific first
    /// (longer prefix, then a named method before `*`); a later flag for the
    /// same route replaces an earlier one.
    pub fn build(
        key_header: Option<&str>,
        key_rate: Option<(u32, u32)>,
        routes: &[RouteLimit],
    ) -> Result<KeyPolicy, String> {
        let mut p = KeyPolicy::NONE;
        if let Some(name) = key_header {
            let name = parse_key_header(name)?;
            p.name[..name.len()].copy_from_slice(name.as_bytes());
            p.name[name.len()] = b':';
            p.name_len = name.len() as u32 + 1;
            if name == "authorization" || name == "proxy-authorization" {
                p.flags |= FOLD_SCHEME;
            }
        }
        if let Some((rate, burst)) = key_rate {
            if key_header.is_none() {
                return Err("--key-rate needs --key-header (where the key is)".into());
            }
            p.key_limit = Limit::per_second(u64::from(rate), u64::from(burst));
        }
        let mut unique: Vec<RouteLimit> = Vec::new();
        for r in routes {
            match unique.iter_mut().find(|u| u.same_route(r)) {
                Some(u) => *u = r.clone(),
                None => unique.push(r.clone()),
            }
        }
        if unique.len() > ROUTE_SLOTS {
            return Err(format!(
                "{} route limits; at most {ROUTE_SLOTS}",
                unique.len()
            ));
        }
        unique.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| (a.method == "*").cmp(&(b.method == "*")))
        });
        for (i, r) in unique.iter().enumerate() {
            p.routes[i] = r.route();
        }
        p.route_count = unique.len() as u32;
        p.tables = RouteTables::build(&p.routes[..unique.len()]);
        Ok(p)
    }

    /// The route limits this policy holds, as flags would spell them.
    pub fn route_limits(&self) -> Vec<RouteLimit> {
        let n = (self.route_count as usize).min(ROUTE_SLOTS);
        self.routes[..n]
            .iter()
            .map(|r| {
                let per = |ns: u64| 1_000_000_000u64.checked_div(ns).unwrap_or(0);
                let rate = per(r.limit.interval_ns) as u32;
                RouteLimit {
                    method: if r.method_len == 0 {
                        "*".into()
                    } else {
                        String::from_utf8_lossy(&r.method[..r.method_len as usize]).into()
                    },
                    prefix: String::from_utf8_lossy(&r.prefix[..r.prefix_len as usize]).into(),
                    rate,
                    burst: r.limit.burst_events() as u32,
                }
            })
            .collect()
    }

    /// Whether anything is limited (the kernel's key stage runs).
    pub fn is_active(&self) -> bool {
        self.key_limit.is_set() || self.route_count != 0
    }
}

impl RouteTables {
    /// The masks of `routes` (most specific first, at most [`ROUTE_SLOTS`]).
    pub fn build(routes: &[Route]) -> RouteTables {
        let mut t = RouteTables::EMPTY;
        // Strictest first: the longest interval, then the smallest burst.
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by(|&a, &b| {
            let (la, lb) = (&routes[a].limit, &routes[b].limit);
            lb.interval_ns
                .cmp(&la.interval_ns)
                .then(la.burst_ns.cmp(&lb.burst_ns))
        });
        for (j, &i) in order.iter().enumerate() {
            t.strict_route[j] = i as u8;
        }
        let strict_bit = |i: usize| 1u16 << order.iter().position(|&x| x == i).expect("a route");
        for (i, r) in routes.iter().enumerate() {
            let (bit, sbit) = (1u16 << i, strict_bit(i));
            let any = r.method_len == 0;
            let method = &r.method[..(r.method_len as usize).min(METHOD_MAX)];
            // A server answers HEAD as GET (without the body): a GET limit binds
            // HEAD too. Per byte position the masks then take G|H, E, T|A, D and
            // a length of 3 or 4: a few made-up methods ("HET") match as well,
            // which servers refuse anyway; over-charging never lets one escape.
            let spellings: &[&[u8]] = if method == b"GET" {
                &[b"GET", b"HEAD"]
            } else {
                &[method]
            };
            for at in 0..METHOD_MAX {
                for b in 0..256usize {
                    if any
                        || spellings
                            .iter()
                            .any(|m| m.get(at).is_some_and(|&c| c as usize == b))
                    {
                        t.method[at][b] |= bit;
                        t.method_strict[at][b] |= sbit;
                    }
                }
            }
            for end in 0..METHOD_MAX + 2 {
                if any || spellings.iter().any(|m| m.len() == end) {
                    t.method_end[end] |= bit;
                    t.method_end_strict[end] |= sbit;
                }
            }
            for at in 0..PREFIX_MAX {
                for b in 0..256usize {
                    if at >= r.prefix_len as usize || r.prefix[at] as usize == b {
                        t.prefix[at][b] |= bit;
                    }
                }
            }
            for at in 0..=PREFIX_MAX {
                if r.prefix_len as usize <= at {
                    t.done[at] |= bit;
                }
            }
        }
        t
    }
}
