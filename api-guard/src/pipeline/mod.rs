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
}

impl HeadStage {
    pub fn new(auth_headers: Vec<String>) -> Self {
        Self { auth_headers }
    }

    pub fn parse<'a>(&'a self, head: &'a [u8]) -> Result<RequestHead<'a>, NotHttp> {
        http::parse(head, &self.auth_headers)
    }
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
