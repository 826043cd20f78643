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
        Self { auth_headers, key }
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
    fn method_labels_are_bounded() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("BREW"), "OTHER");
    }
}
