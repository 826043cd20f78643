//! Pure stages on events: plain config values in, plain values out, no kernel,
//! no I/O. Today the HTTP request-head parser; identity (PROXY protocol,
//! forwarded headers, API keys), routes and response joining come here next.

pub mod answered;
pub mod client_classes;
pub mod http;
#[cfg(test)]
mod http_props;
pub mod join;
pub mod routes;

use http::{NotHttp, RequestHead};

/// The request-head stage: parses a sampled head, noting which of the
/// credential headers it carries.
#[derive(Clone, Debug)]
pub struct HeadStage {
    /// Credential header names, lower-case.
    auth_headers: Vec<String>,
    key: Option<KeyHeader>,
    /// The key of credential fingerprints: random per daemon, so a
    /// fingerprint cannot be matched against a list of known credentials.
    fingerprint_key: std::hash::RandomState,
}

/// `--key-header` and the kernel's hash secret: a sampled head's key is shown
/// by its fingerprint, the bucket's, never by its value.
#[derive(Clone, Debug)]
pub struct KeyHeader {
    /// Lower-case.
    pub name: String,
    pub secret: [u64; 2],
    /// Lower-case the value's first word (an `Authorization` scheme).
    pub fold: bool,
}

impl HeadStage {
    pub fn new(auth_headers: Vec<String>, key: Option<KeyHeader>) -> Self {
        Self {
            auth_headers,
            key,
            fingerprint_key: std::hash::RandomState::new(),
        }
    }

    /// A keyed hash (SipHash, random key) of the head's credential: the
    /// same credential gives the same fingerprint for this daemon's life,
    /// and nothing of it can be read back.
    pub fn fingerprint(&self, head: &[u8]) -> Option<u64> {
        use std::hash::BuildHasher as _;
        http::credential(head, &self.auth_headers).map(|v| self.fingerprint_key.hash_one(v))
    }

    pub fn parse<'a>(&'a self, head: &'a [u8]) -> Result<RequestHead<'a>, NotHttp> {
        let mut parsed = http::parse(head, &self.auth_headers)?;
        if let Some(k) = &self.key {
            parsed.key_fingerprint = key_value(head, &k.name).and_then(|v| {
                api_guard_common::keys::hash_value(k.secret, k.fold, v)
                    .map(api_guard_common::keys::fingerprint)
            });
        }
        Ok(parsed)
    }
}

/// The value of the first header named `name` (lower-case) in a head.
fn key_value<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    head.split(|b| *b == b'\n')
        .skip(1)
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .find_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| &line[colon + 1..])
        })
}

/// A bounded method label: the nine methods the kernel recognises, else OTHER.
pub fn method_label(method: &str) -> &'static str {
    api_guard_common::http::Method::ALL
        .iter()
        .map(|m| m.as_str())
        .find(|m| *m == method)
        .unwrap_or("OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_credentials_apart_and_hold_none() {
        let stage = HeadStage::new(vec!["authorization".into(), "x-api-key".into()], None);
        let a = stage.fingerprint(b"GET / HTTP/1.1\r\nAuthorization: Bearer aaa\r\n\r\n");
        let a2 = stage.fingerprint(b"GET /x HTTP/1.1\r\nauthorization: Bearer aaa\r\n\r\n");
        let b = stage.fingerprint(b"GET / HTTP/1.1\r\nAuthorization: Bearer aab\r\n\r\n");
        let key = stage
            .fingerprint(b"GET / HTTP/1.1\r\nX-API-Key: aaa\r\nAuthorization: Bearer aab\r\n\r\n");
        assert!(a.is_some());
        assert_eq!(a, a2);
        assert_ne!(a, b);
        // The first-ranked header wins, as in the parse.
        assert_eq!(key, b);
        assert_eq!(
            stage.fingerprint(b"GET / HTTP/1.1\r\nAuthorization:  \r\n\r\n"),
            None
        );
        // Another daemon's key: other fingerprints.
        let other = HeadStage::new(vec!["authorization".into()], None);
        assert_ne!(
            other.fingerprint(b"GET / HTTP/1.1\r\nAuthorization: Bearer aaa\r\n\r\n"),
            a
        );
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("BREW"), "OTHER");
    }
}
