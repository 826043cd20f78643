//! Property tests of the request parser: whatever the bytes, no panic; whatever
//! the request, its fields come back; whatever the secret, it is never kept.

use proptest::prelude::*;

use super::http::{self as request, AuthScheme, REDACTED, redact_query};

fn auth() -> Vec<String> {
    vec!["authorization".into(), "x-api-key".into()]
}

/// A path segment, query value or header value: printable, no separators.
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-]{1,24}"
}

proptest! {
    #[test]
    fn any_bytes_parse_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = request::parse(&data, &auth());
        let _ = redact_query(&String::from_utf8_lossy(&data));
    }

    #[test]
    fn request_like_bytes_parse_or_fail_cleanly(
        method in "(GET|POST|PUT|DELETE)",
        path in "/[ -~]{0,40}",
        junk in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut data = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
        data.extend(junk);
        let _ = request::parse(&data, &auth());
    }

    #[test]
    fn a_request_comes_back_whole(
        method in "(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|TRACE)",
        segments in proptest::collection::vec(token(), 1..5),
        host in token(),
        agent in token(),
        length in any::<u32>(),
        scheme in prop_oneof![Just("Bearer"), Just("Basic"), Just("Digest")],
        // Distinctive, so it cannot appear in the struct's own field names.
        secret in "zq[0-9]{10,16}",
    ) {
        let path = format!("/{}", segments.join("/"));
        let head = format!(
            "{method} {path}?page=2 HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\nContent-Length: {length}\r\nAuthorization: {scheme} {secret}\r\n\r\n"
        );
        let auth = auth();
        let h = request::parse(head.as_bytes(), &auth).unwrap();
        prop_assert_eq!(h.method, method.as_str());
        prop_assert_eq!(h.path, path.as_str());
        prop_assert_eq!(h.query.as_deref(), Some("page=2"));
        prop_assert_eq!(h.host.as_deref(), Some(host.as_str()));
        prop_assert_eq!(h.user_agent.as_deref(), Some(agent.as_str()));
        prop_assert_eq!(h.content_length, Some(u64::from(length)));
        let expected = match scheme {
            "Bearer" => AuthScheme::Bearer,
            "Basic" => AuthScheme::Basic,
            _ => AuthScheme::Other,
        };
        prop_assert_eq!(h.auth, expected);
        // The credential value is not kept anywhere in what the parser returns
        // (unless it also appears in a kept field by chance).
        let kept = format!("{} {} {:?} {:?} {:?}", h.method, h.path, h.query, h.host, h.user_agent);
        let debug = format!("{:?}", h);
        if !kept.contains(&secret) {
            prop_assert!(!debug.contains(&secret));
        }
    }

    #[test]
    fn secret_query_values_never_survive(
        prefix in "[a-z]{0,6}",
        name in prop_oneof![Just("token"), Just("api_key"), Just("Password"), Just("X-Amz-Signature"), Just("session_id"), Just("otp")],
        suffix in "[a-z_]{0,6}",
        secret in "[A-Za-z0-9]{12,24}",
        other in token(),
    ) {
        let query = format!("a={other}&{prefix}{name}{suffix}={secret}&b={other}");
        let redacted = redact_query(&query);
        prop_assert!(!redacted.contains(&secret), "{}", redacted);
        let needle = format!("={REDACTED}");
        prop_assert!(redacted.contains(&needle));
    }
}
