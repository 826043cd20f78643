//! Route templates with bounded cardinality: `/v1/users/42/orders/7` becomes
//! `/v1/users/{id}/orders/{id}`, so metrics and detectors count per API route,
//! not per URL, whatever a client sends.
//!
//! - Operator patterns come first (`--route 'GET /v1/users/{id}'`, the method
//!   optional): a `{name}` segment matches any one segment, in order given.
//! - Otherwise segments that look like identifiers become parameters: numbers
//!   `{id}`, UUIDs `{uuid}`, long hex strings `{hex}`, long opaque strings
//!   `{token}`; and at each position (after what precedes it, templated), once
//!   more than `max_values` distinct literals were seen, any segment there
//!   becomes `{param}`.
//! - At most `max_routes` templates exist; a path that would make another is
//!   the one `other` route, counted. Paths deeper than [`MAX_SEGMENTS`] are cut
//!   to a `{rest}` tail.
//!
//! The query string never gets here (the request parser splits it off), and a
//! `#fragment` is cut too. Memory is bounded by the caps: templates, tracked
//! positions, and values kept per position.

use std::collections::{HashMap, HashSet};

/// Segments past this many become one `{rest}` parameter.
pub const MAX_SEGMENTS: usize = 16;
/// The route a path gets once the route cap is reached.
pub const OTHER: &str = "other";
/// Segments at least this long that are not plain words are opaque tokens.
const OPAQUE_LEN: usize = 24;
/// Hex segments at least this long are parameters (shorter ones may be words:
/// `cafe`, `add`).
const HEX_LEN: usize = 16;

/// Plain configuration values.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Operator patterns: `[METHOD ]/path/{param}/...`.
    pub patterns: Vec<String>,
    /// Templates at most (the `other` route aside).
    pub max_routes: usize,
    /// Distinct literals at one position before it becomes `{param}`.
    pub max_values: usize,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            max_routes: DEFAULT_MAX_ROUTES,
            max_values: DEFAULT_MAX_VALUES,
        }
    }
}

pub const DEFAULT_MAX_ROUTES: usize = 200;
pub const DEFAULT_MAX_VALUES: usize = 50;

/// A route pattern that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadPattern {
    #[error("route pattern {0:?} must be `[METHOD ]/path`, the path starting with '/'")]
    Shape(String),
    #[error("route pattern {0:?} has a malformed `{{name}}` segment")]
    Param(String),
    #[error("route pattern {0:?} has more than {MAX_SEGMENTS} segments")]
    TooDeep(String),
}

/// One operator pattern, parsed.
#[derive(Clone, Debug)]
struct Pattern {
    method: Option<String>,
    /// `Some(name)` for a parameter, else the literal.
    segments: Vec<Segment>,
    template: String,
}

#[derive(Clone, Debug)]
enum Segment {
    Literal(String),
    Param(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, BadPattern> {
        let text = text.trim();
        let (method, path) = match text.split_once(char::is_whitespace) {
            Some((m, p)) => (Some(m.to_ascii_uppercase()), p.trim()),
            None => (None, text),
        };
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            return Err(BadPattern::Shape(text.into()));
        }
        if let Some(m) = &method
            && !m.bytes().all(|b| b.is_ascii_alphabetic())
        {
            return Err(BadPattern::Shape(text.into()));
        }
        let mut segments = Vec::new();
        for seg in path[1..].split('/') {
            if let Some(inner) = seg.strip_prefix('{') {
                let name = inner
                    .strip_suffix('}')
                    .filter(|n| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    })
                    .ok_or_else(|| BadPattern::Param(text.into()))?;
                segments.push(Segment::Param(name.into()));
            } else if seg.contains(['{', '}']) {
                return Err(BadPattern::Param(text.into()));
            } else {
                segments.push(Segment::Literal(seg.into()));
            }
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(BadPattern::TooDeep(text.into()));
        }
        Ok(Self {
            method,
            segments,
            template: path.into(),
        })
    }

    fn matches(&self, method: &str, segs: &[&str]) -> Option<Vec<(String, String)>> {
        if self.method.as_deref().is_some_and(|m| m != method) || segs.len() != self.segments.len()
        {
            return None;
        }
        let mut params = Vec::new();
        for (want, got) in self.segments.iter().zip(segs) {
            match want {
                Segment::Literal(l) if l == got => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), (*got).to_string())),
            }
        }
        Some(params)
    }
}

/// Checks one pattern; returns it trimmed.
pub fn check_pattern(text: &str) -> Result<String, BadPattern> {
    Pattern::parse(text)?;
    Ok(text.trim().to_string())
}

/// The patterns of a routes file: one a line, `#` comments and blank lines
/// skipped; an error names the line.
pub fn parse_patterns_file(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(check_pattern(line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    Ok(out)
}

/// A path's route: its template and the values of its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub template: String,
    /// (name, value) in path order; empty for the `other` route.
    pub params: Vec<(String, String)>,
}

/// What the route stage counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Paths that got the `other` route (the cap was reached).
    pub overflow: u64,
    /// Positions turned into `{param}` for having too many values.
    pub generalized: u64,
}

/// Values seen at one position (after a templated prefix).
#[derive(Debug, Default)]
struct Position {
    values: HashSet<String>,
    /// More than `max_values` were seen: any segment here is a parameter.
    any: bool,
}

/// The route stage.
pub struct Routes {
    patterns: Vec<Pattern>,
    max_routes: usize,
    max_values: usize,
    templates: HashSet<String>,
    /// By templated prefix (`/v1/users/{id}`): the literals seen next.
    positions: HashMap<String, Position>,
    pub stats: RouteStats,
}

impl Routes {
    pub fn new(cfg: &RouteConfig) -> Result<Self, BadPattern> {
        let patterns = cfg
            .patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            patterns,
            max_routes: cfg.max_routes.max(1),
            max_values: cfg.max_values.max(1),
            templates: HashSet::new(),
            positions: HashMap::new(),
            stats: RouteStats::default(),
        })
    }

    /// Templates made so far (the `other` route aside).
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The route of `path` (no query) requested with `method`.
    pub fn route(&mut self, method: &str, path: &str) -> Route {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.strip_prefix('/').unwrap_or(path);
        let all: Vec<&str> = path.split('/').collect();
        for p in &self.patterns {
            if let Some(params) = p.matches(method, &all) {
                return Route {
                    template: p.template.clone(),
                    params,
                };
            }
        }
        let (segs, rest) = if all.len() > MAX_SEGMENTS {
            (
                &all[..MAX_SEGMENTS - 1],
                Some(all[MAX_SEGMENTS - 1..].join("/")),
            )
        } else {
            (&all[..], None)
        };
        let mut template = String::new();
        let mut params = Vec::new();
        for seg in segs {
            let kind = match shape(seg) {
                Some(kind) => Some(kind),
                None => self.position(&template, seg),
            };
            template.push('/');
            match kind {
                Some(name) => {
                    template.push('{');
                    template.push_str(name);
                    template.push('}');
                    params.push((name.to_string(), (*seg).to_string()));
                }
                None => template.push_str(seg),
            }
        }
        if let Some(rest) = rest {
            template.push_str("/{rest}");
            params.push(("rest".into(), rest));
        }
        if !self.templates.contains(&template) {
            if self.templates.len() >= self.max_routes {
                self.stats.overflow += 1;
                return Route {
                    template: OTHER.into(),
                    params: Vec::new(),
                };
            }
            self.templates.insert(template.clone());
        }
        Route { template, params }
    }

    /// Whether `seg` after `prefix` is a parameter by count: `Some("param")`
    /// once more than `max_values` literals were seen there.
    fn position(&mut self, prefix: &str, seg: &str) -> Option<&'static str> {
        // Positions tracked at most: a small multiple of the routes.
        let cap = self.max_routes.saturating_mul(4).max(16);
        if !self.positions.contains_key(prefix) {
            if self.positions.len() >= cap {
                // Untracked: a parameter, so nothing unbounded comes of it.
                return Some("param");
            }
            self.positions
                .insert(prefix.to_string(), Position::default());
        }
        let pos = self.positions.get_mut(prefix)?;
        if pos.any {
            return Some("param");
        }
        if pos.values.contains(seg) {
            return None;
        }
        if pos.values.len() >= self.max_values {
            pos.any = true;
            pos.values = HashSet::new();
            self.stats.generalized += 1;
            return Some("param");
        }
        pos.values.insert(seg.to_string());
        None
    }
}

/// A segment's parameter kind by its shape alone.
fn shape(seg: &str) -> Option<&'static str> {
    let b = seg.as_bytes();
    if b.is_empty() {
        return None;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return Some("id");
    }
    if is_uuid(b) {
        return Some("uuid");
    }
    if b.len() >= HEX_LEN && b.iter().all(u8::is_ascii_hexdigit) {
        return Some("hex");
    }
    if b.len() >= OPAQUE_LEN {
        // Long and not a readable word: anything with a digit, or an encoding's
        // punctuation, or simply too long to be a name.
        let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
        if digits > 0 || b.iter().any(|c| matches!(c, b'=' | b'%' | b'+' | b'~')) || b.len() > 48 {
            return Some("token");
        }
    }
    None
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(patterns: &[&str]) -> Routes {
        Routes::new(&RouteConfig {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    fn t(r: &mut Routes, path: &str) -> String {
        r.route("GET", path).template
    }

    #[test]
    fn identifiers_become_parameters_and_words_stay() {
        let mut r = routes(&[]);
        assert_eq!(t(&mut r, "/v1/users/42"), "/v1/users/{id}");
        assert_eq!(
            t(
                &mut r,
                "/v1/users/550e8400-e29b-41d4-a716-446655440000/orders"
            ),
            "/v1/users/{uuid}/orders"
        );
        assert_eq!(t(&mut r, "/blobs/deadbeefdeadbeef00"), "/blobs/{hex}");
        assert_eq!(t(&mut r, "/s/eyJhbGciOiJIUzI1NiJ9abcdefgh"), "/s/{token}");
        assert_eq!(t(&mut r, "/cafe/add"), "/cafe/add");
        assert_eq!(t(&mut r, "/"), "/");
        assert_eq!(t(&mut r, ""), "/");
        let route = r.route("GET", "/v1/users/42/orders/7");
        assert_eq!(route.template, "/v1/users/{id}/orders/{id}");
        assert_eq!(
            route.params,
            [("id".into(), "42".into()), ("id".into(), "7".into())]
        );
    }

    #[test]
    fn the_query_string_never_changes_the_route() {
        let mut r = routes(&[]);
        for i in 0..1000 {
            assert_eq!(t(&mut r, &format!("/items?page={i}&x=y#f{i}")), "/items");
        }
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn operator_patterns_win_and_name_their_parameters() {
        let mut r = routes(&["GET /v1/users/{user}", "/v1/orgs/{org}/members"]);
        let got = r.route("GET", "/v1/users/alice");
        assert_eq!(got.template, "/v1/users/{user}");
        assert_eq!(got.params, [("user".into(), "alice".into())]);
        // Another method: inferred (a word stays).
        assert_eq!(
            r.route("POST", "/v1/users/alice").template,
            "/v1/users/alice"
        );
        assert_eq!(
            r.route("DELETE", "/v1/orgs/acme/members").template,
            "/v1/orgs/{org}/members"
        );
    }

    #[test]
    fn bad_patterns_say_why() {
        for (p, want) in [
            ("users/{id}", "must be"),
            ("GET /users/{id", "malformed"),
            ("GET /users/{}", "malformed"),
            ("G3T /users", "must be"),
            ("/a/b{c}", "malformed"),
        ] {
            let err = Routes::new(&RouteConfig {
                patterns: vec![p.into()],
                ..Default::default()
            })
            .err()
            .unwrap_or_else(|| panic!("{p} accepted"));
            assert!(err.to_string().contains(want), "{p}: {err}");
        }
    }

    #[test]
    fn a_hundred_thousand_user_paths_make_one_route() {
        let mut r = routes(&[]);
        for n in 0..100_000 {
            assert_eq!(t(&mut r, &format!("/users/{n}")), "/users/{id}");
        }
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn many_distinct_words_at_one_position_become_a_parameter() {
        let mut r = routes(&[]);
        let names: Vec<String> = (0..200)
            .map(|i| {
                // Letters only: none looks like an identifier by shape.
                let mut s = String::new();
                let mut n = i;
                for _ in 0..4 {
                    s.push((b'a' + (n % 26) as u8) as char);
                    n /= 26;
                }
                s
            })
            .collect();
        for n in &names {
            t(&mut r, &format!("/users/{n}/profile"));
        }
        assert_eq!(t(&mut r, "/users/zzzz/profile"), "/users/{param}/profile");
        assert!(r.len() <= DEFAULT_MAX_VALUES + 1);
        assert_eq!(r.stats.generalized, 1);
    }

    /// The attacker: random junk paths of every depth and length. Whatever
    /// comes, the routes stay under the cap and memory stays bounded.
    #[test]
    fn random_junk_paths_stay_under_the_cap() {
        let mut r = Routes::new(&RouteConfig {
            max_routes: 100,
            max_values: 20,
            ..Default::default()
        })
        .unwrap();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"abcdefghijklmnopqrstuvwxyz-_.~%AZ09";
        let mut templates = HashSet::new();
        for _ in 0..100_000 {
            let depth = 1 + next() % 24;
            let mut path = String::new();
            for _ in 0..depth {
                path.push('/');
                for _ in 0..(next() % 12) {
                    path.push(alphabet[(next() % alphabet.len() as u64) as usize] as char);
                }
            }
            templates.insert(t(&mut r, &path));
        }
        assert!(r.len() <= 100);
        assert!(templates.len() <= 101, "{}", templates.len());
        assert!(templates.contains(OTHER));
        assert!(r.stats.overflow > 0);
        assert!(r.positions.len() <= 400);
        assert!(r.positions.values().all(|p| p.values.len() <= 20));
    }

    #[test]
    fn very_long_paths_are_cut_to_a_rest_parameter() {
        let mut r = routes(&[]);
        let deep = "/a".repeat(10_000);
        let route = r.route("GET", &deep);
        assert_eq!(route.template.matches('/').count(), MAX_SEGMENTS);
        assert!(route.template.ends_with("/{rest}"));
        let long = format!("/files/{}", "x".repeat(100_000));
        assert_eq!(t(&mut r, &long), "/files/{token}");
    }
}
