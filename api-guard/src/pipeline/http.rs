//! Parsing a sampled request head with httparse: the fields the access log and
//! the metrics need, whether it carries a credential, and redaction of anything
//! secret. Nothing here keeps a credential value.

use std::{borrow::Cow, fmt};

/// How much of the head the capture held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completeness {
    /// The whole head (request line and headers up to the blank line).
    Complete,
    /// Cut short by the capture (headers longer than `--capture-bytes`).
    Truncated,
}

/// Why a sample is not an HTTP/1.x request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotHttp;

/// The credential scheme of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthScheme {
    None,
    Bearer,
    Basic,
    /// Another scheme, or a bare key (`X-API-Key: ...`).
    Other,
}

impl AuthScheme {
    pub const ALL: [AuthScheme; 4] = [
        AuthScheme::None,
        AuthScheme::Bearer,
        AuthScheme::Basic,
        AuthScheme::Other,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AuthScheme::None => "none",
            AuthScheme::Bearer => "bearer",
            AuthScheme::Basic => "basic",
            AuthScheme::Other => "other",
        }
    }
}

impl fmt::Display for AuthScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the daemon keeps of a request head. It borrows from the captured bytes
/// (and the configured header names): at hundreds of thousands of samples a
/// second, copies cost more than the parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub completeness: Completeness,
    pub method: &'a str,
    pub path: &'a str,
    /// The query with credential-like parameter values redacted.
    pub query: Option<Cow<'a, str>>,
    pub version: Option<u8>,
    pub host: Option<Cow<'a, str>>,
    pub user_agent: Option<Cow<'a, str>>,
    pub content_length: Option<u64>,
    pub auth: AuthScheme,
    /// The (lower-cased) name of the credential header found, as configured.
    pub auth_header: Option<&'a str>,
    /// The `--key-header` value's fingerprint (set by `HeadStage`).
    pub key_fingerprint: Option<u32>,
}

/// What replaces a redacted value.
pub const REDACTED: &str = "REDACTED";

/// Query parameters whose values are credentials, matched case-insensitively as
/// a whole name or a part of one ("access_token", "X-Amz-Signature").
const SECRET_PARAMS: [&str; 14] = [
    "token",
    "key",
    "pass",
    "pwd",
    "otp",
    "assertion",
    "secret",
    "signature",
    "sig",
    "auth",
    "session",
    "jwt",
    "credential",
    "code",
];

/// The most headers a head may have; more counts as not HTTP.
const MAX_HEADERS: usize = 128;

/// Parses a captured head. `auth_headers` are the credential header names
/// (lower-case), in order of preference.
pub fn parse<'a>(data: &'a [u8], auth_headers: &'a [String]) -> Result<RequestHead<'a>, NotHttp> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let completeness = match req.parse(data) {
        Ok(httparse::Status::Complete(_)) => Completeness::Complete,
        Ok(httparse::Status::Partial) => Completeness::Truncated,
        Err(_) => return Err(NotHttp),
    };
    // A partial parse still needs a whole request line to be worth logging.
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(NotHttp);
    };
    // An absolute-form target ("http://user:pass@host/x") keeps only its path:
    // the authority may hold credentials.
    let target = origin_form(target);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(redact_query(q))),
        None => (target, None),
    };
    let mut head = RequestHead {
        completeness,
        method,
        path,
        query,
        version: req.version,
        host: None,
        user_agent: None,
        content_length: None,
        auth: AuthScheme::None,
        auth_header: None,
        key_fingerprint: None,
    };
    let mut auth_rank = usize::MAX;
    // httparse leaves unparsed slots empty.
    for h in req.headers.iter().filter(|h| !h.name.is_empty()) {
        if h.name.eq_ignore_ascii_case("host") {
            head.host = Some(String::from_utf8_lossy(h.value));
        } else if h.name.eq_ignore_ascii_case("user-agent") {
            head.user_agent = Some(String::from_utf8_lossy(h.value));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
        if let Some(rank) = auth_headers
            .iter()
            .position(|a| h.name.eq_ignore_ascii_case(a))
            && rank < auth_rank
            && !h.value.iter().all(u8::is_ascii_whitespace)
        {
            auth_rank = rank;
            head.auth = scheme(h.value);
            head.auth_header = Some(auth_headers[rank].as_str());
        }
    }
    Ok(head)
}

/// The value of the credential header `parse` would pick (the first of
/// `auth_headers` present and not blank), for fingerprinting only: it never
/// leaves the pipeline.
pub(super) fn credential<'a>(data: &'a [u8], auth_headers: &[String]) -> Option<&'a [u8]> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(data).ok()?;
    let mut best: Option<(usize, &'a [u8])> = None;
    for h in req.headers.iter().filter(|h| !h.name.is_empty()) {
        if let Some(rank) = auth_headers
            .iter()
            .position(|a| h.name.eq_ignore_ascii_case(a))
            && best.is_none_or(|(r, _)| rank < r)
            && !h.value.iter().all(u8::is_ascii_whitespace)
        {
            best = Some((rank, h.value));
        }
    }
    best.map(|(_, v)| v)
}

/// The path-and-query of a request target: absolute-form loses its scheme and
/// authority.
fn origin_form(target: &str) -> &str {
    // Compare bytes: the target may hold non-ASCII bytes, and slicing the str
    // inside a character would panic. A matched ASCII prefix ends on a boundary.
    let lower_starts = |p: &str| {
        target
            .as_bytes()
            .get(..p.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(p.as_bytes()))
    };
    let Some(rest) = ["http://", "https://"]
        .iter()
        .find(|p| lower_starts(p))
        .map(|p| &target[p.len()..])
    else {
        return target;
    };
    // Past any userinfo first: a client that sends a raw '?' in its password
    // ("http://u:pa?ss@h/x", which RFC 3986 forbids) must not have the rest of
    // it taken for the query. The authority ends at the first '/'.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    match rest.find(['/', '?']) {
        Some(i) => &rest[i..],
        None => "/",
    }
}

/// The scheme of a credential header value; only its first word is looked at.
fn scheme(value: &[u8]) -> AuthScheme {
    let first = value
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .unwrap_or(b"");
    if first.eq_ignore_ascii_case(b"bearer") {
        AuthScheme::Bearer
    } else if first.eq_ignore_ascii_case(b"basic") {
        AuthScheme::Basic
    } else {
        AuthScheme::Other
    }
}

fn is_secret_param(name: &str) -> bool {
    let contains = |n: &[u8]| {
        SECRET_PARAMS.iter().any(|s| {
            n.windows(s.len())
                .any(|w| w.eq_ignore_ascii_case(s.as_bytes()))
        })
    };
    if name.contains('%') {
        contains(percent_decode_lossy(name).as_bytes())
    } else {
        contains(name.as_bytes())
    }
}

/// The query with the values of credential-like parameters replaced; borrowed
/// when there is nothing to replace.
pub fn redact_query(query: &str) -> Cow<'_, str> {
    let secret = |pair: &str| {
        pair.split_once('=')
            .is_some_and(|(name, _)| is_secret_param(name))
    };
    if !query.split('&').any(secret) {
        return Cow::Borrowed(query);
    }
    Cow::Owned(
        query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_param(name) => format!("{name}={REDACTED}"),
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// Enough percent-decoding to see a parameter's real name ("api%5Fkey").
fn percent_decode_lossy(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    static AUTH: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| vec!["authorization".into(), "x-api-key".into()]);

    fn auth() -> &'static [String] {
        AUTH.as_slice()
    }

    #[test]
    fn a_complete_head() {
        let h = parse(
            b"POST /v1/items?id=7 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: curl/8\r\nContent-Length: 12\r\nAuthorization: Bearer s3cr3t\r\n\r\n{\"a\":1}",
            auth(),
        )
        .unwrap();
        assert_eq!(h.completeness, Completeness::Complete);
        assert_eq!((h.method, h.path), ("POST", "/v1/items"));
        assert_eq!(h.query.as_deref(), Some("id=7"));
        assert_eq!(h.host.as_deref(), Some("api.example"));
        assert_eq!(h.user_agent.as_deref(), Some("curl/8"));
        assert_eq!(h.content_length, Some(12));
        assert_eq!(h.auth, AuthScheme::Bearer);
        assert_eq!(h.auth_header, Some("authorization"));
        assert_eq!(h.version, Some(1));
        assert!(
            !format!("{h:?}").contains("s3cr3t"),
            "the secret is not kept"
        );
    }

    #[test]
    fn schemes_and_other_credential_headers() {
        let basic = parse(
            b"GET / HTTP/1.1\r\nauthorization: basic dXNlcjpwdw==\r\n\r\n",
            auth(),
        )
        .unwrap();
        assert_eq!(basic.auth, AuthScheme::Basic);
        let key = parse(b"GET / HTTP/1.1\r\nX-API-Key: k-123\r\n\r\n", auth()).unwrap();
        assert_eq!(
            (key.auth, key.auth_header),
            (AuthScheme::Other, Some("x-api-key"))
        );
        let none = parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", auth()).unwrap();
        assert_eq!((none.auth, none.auth_header), (AuthScheme::None, None));
        let empty = parse(b"GET / HTTP/1.1\r\nAuthorization:  \r\n\r\n", auth()).unwrap();
        assert_eq!(empty.auth, AuthScheme::None, "an empty credential is none");
        // A header not configured as a credential does not count.
        let only_auth = vec!["authorization".to_string()];
        let key = parse(b"GET / HTTP/1.1\r\nX-API-Key: k\r\n\r\n", &only_auth).unwrap();
        assert_eq!(key.auth, AuthScheme::None);
    }

    #[test]
    fn truncated_and_not_http() {
        let t = parse(
            b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: long-agent-cut-he",
            auth(),
        )
        .unwrap();
        assert_eq!(t.completeness, Completeness::Truncated);
        assert_eq!(t.host.as_deref(), Some("x"));
        assert_eq!(
            parse(b"GET /only-the-start-of-the-li", auth()),
            Err(NotHttp)
        );
        assert_eq!(parse(b"\x16\x03\x01\x02\x00\x01", auth()), Err(NotHttp));
        assert_eq!(parse(b"", auth()), Err(NotHttp));
    }

    #[test]
    fn credential_like_query_values_are_redacted() {
        assert_eq!(
            redact_query("page=2&api_key=abc&access_token=xyz&X-Amz-Signature=s&q=term&PASSWORD=p"),
            "page=2&api_key=REDACTED&access_token=REDACTED&X-Amz-Signature=REDACTED&q=term&PASSWORD=REDACTED"
        );
        assert_eq!(
            redact_query("api%5Fkey=abc&flag"),
            "api%5Fkey=REDACTED&flag"
        );
        let h = parse(b"GET /x?token=hunter2&n=1 HTTP/1.1\r\n\r\n", auth()).unwrap();
        assert_eq!(h.query.as_deref(), Some("token=REDACTED&n=1"));
    }

    #[test]
    fn absolute_form_targets_lose_their_authority() {
        let h = parse(
            b"GET http://user:hunter2@api.example/v1/x?page=1 HTTP/1.1\r\n\r\n",
            auth(),
        )
        .unwrap();
        assert_eq!((h.path, h.query.as_deref()), ("/v1/x", Some("page=1")));
        assert!(!format!("{h:?}").contains("hunter2"));
        assert_eq!(origin_form("HTTPS://h"), "/");
        assert_eq!(origin_form("http://h?q=1"), "?q=1");
        assert_eq!(origin_form("/plain"), "/plain");
        assert_eq!(origin_form("*"), "*");
        // Raw '?' and '@' in a password, and an '@' in a path.
        assert_eq!(origin_form("http://u:pa?ss@h/x?q=1"), "/x?q=1");
        assert_eq!(origin_form("http://u:p@ss@h:8080"), "/");
        assert_eq!(origin_form("http://h/users/a@b?c"), "/users/a@b?c");
        // Found by the fuzzer: a multi-byte character across the prefix's length.
        let _ = parse(b"4p pppppaO\xd0\x8c ", auth());
        assert_eq!(origin_form("pppppaO\u{40c}"), "pppppaO\u{40c}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        const ALPHABET: &[u8] = b"GET /?&=% HTTP/1.1\r\n:abc%2\x00\xff";
        let mut x: u64 = 0x2545f4914f6cdd1d;
        for len in 0..600 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly request-like bytes, so parsing gets deep.
                    ALPHABET[(x % ALPHABET.len() as u64) as usize]
                })
                .collect();
            let _ = parse(&data, auth());
            let _ = redact_query(&String::from_utf8_lossy(&data));
        }
    }
}
