//! Fuzzes the sampled-request parser with arbitrary captures (`cargo xtask fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The daemon's own parser, from its library built without the kernel programs
// (no eBPF toolchain needed).
use api_guard::pipeline::http as request;

/// A credential planted ahead of the fuzzed bytes.
const SECRET: &[u8] = b"pl4nted-s3cret";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let auth = ["authorization".to_string(), "x-api-key".to_string()];
    if let Ok(head) = request::parse(data, &auth) {
        let _ = format!("{head:?}");
    }
    let _ = request::redact_query(&String::from_utf8_lossy(data));

    // The same bytes after a head whose credential must never be kept: the
    // parser keeps only its scheme (unless the fuzzed bytes repeat the secret
    // in a field that is kept, such as the user agent).
    let mut planted = b"GET /x HTTP/1.1\r\nAuthorization: Bearer ".to_vec();
    planted.extend_from_slice(SECRET);
    planted.extend_from_slice(b"\r\n");
    planted.extend_from_slice(data);
    if let Ok(head) = request::parse(&planted, &auth)
        && !contains(data, SECRET)
    {
        assert!(
            !format!("{head:?}").contains("pl4nted-s3cret"),
            "a credential was kept: {head:?}"
        );
    }
});
