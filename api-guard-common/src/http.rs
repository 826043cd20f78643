//! Recognising the start of an HTTP/1.x request from the first bytes of a TCP
//! payload. The kernel runs this per packet, so it looks at one 8-byte word: every
//! method token plus its space fits in 8 bytes ("OPTIONS ", "CONNECT ").

/// HTTP/1.x request methods api-guard recognises (RFC 9110 section 9 and PATCH).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get = 1,
    Head = 2,
    Post = 3,
    Put = 4,
    Patch = 5,
    Delete = 6,
    Options = 7,
    Connect = 8,
    Trace = 9,
}

/// Bytes of payload the matcher looks at.
pub const HEAD_LEN: usize = 8;

/// A method token followed by a space, as a little-endian word and the mask of its
/// bytes, so one compare tests the whole token.
#[derive(Clone, Copy)]
struct Token {
    word: u64,
    mask: u64,
    len: usize,
}

const fn token(t: &[u8]) -> Token {
    let mut word = 0u64;
    let mut i = 0;
    while i < t.len() {
        word |= (t[i] as u64) << (8 * i);
        i += 1;
    }
    let mask = if t.len() >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * t.len())) - 1
    };
    Token {
        word,
        mask,
        len: t.len(),
    }
}

const GET: Token = token(b"GET ");
const HEAD: Token = token(b"HEAD ");
const POST: Token = token(b"POST ");
const PUT: Token = token(b"PUT ");
const PATCH: Token = token(b"PATCH ");
const DELETE: Token = token(b"DELETE ");
const OPTIONS: Token = token(b"OPTIONS ");
const CONNECT: Token = token(b"CONNECT ");
const TRACE: Token = token(b"TRACE ");

#[inline(always)]
fn is(word: u64, avail: usize, t: Token) -> bool {
    avail >= t.len && word & t.mask == t.word
}

/// The method whose token (and a space) starts `head`, of which the first `avail`
/// bytes are payload (bytes past `avail` are ignored). Case-sensitive, as RFC 9110
/// requires: "get " and "GETX" are not request starts.
#[inline(always)]
pub fn request_method(head: &[u8; HEAD_LEN], avail: usize) -> Option<Method> {
    let word = u64::from_le_bytes(*head);
    // Dispatch on the first byte so a packet costs at most three compares.
    let m = match head[0] {
        b'G' if is(word, avail, GET) => Method::Get,
        b'H' if is(word, avail, HEAD) => Method::Head,
        b'P' if is(word, avail, POST) => Method::Post,
        b'P' if is(word, avail, PUT) => Method::Put,
        b'P' if is(word, avail, PATCH) => Method::Patch,
        b'D' if is(word, avail, DELETE) => Method::Delete,
        b'O' if is(word, avail, OPTIONS) => Method::Options,
        b'C' if is(word, avail, CONNECT) => Method::Connect,
        b'T' if is(word, avail, TRACE) => Method::Trace,
        _ => return None,
    };
    Some(m)
}

#[cfg(feature = "user")]
mod user;

#[cfg(test)]
mod tests {
    use super::*;

    fn check(payload: &[u8]) -> Option<Method> {
        let mut head = [0u8; HEAD_LEN];
        let n = payload.len().min(HEAD_LEN);
        head[..n].copy_from_slice(&payload[..n]);
        request_method(&head, payload.len())
    }

    #[test]
    fn every_method_token_is_a_request_start() {
        let cases: [(&[u8], Method); 9] = [
            (b"GET / HTTP/1.1\r\n", Method::Get),
            (b"HEAD / HTTP/1.1\r\n", Method::Head),
            (b"POST /x HTTP/1.1\r\n", Method::Post),
            (b"PUT /x HTTP/1.1\r\n", Method::Put),
            (b"PATCH /x HTTP/1.1\r\n", Method::Patch),
            (b"DELETE /x HTTP/1.1\r\n", Method::Delete),
            (b"OPTIONS * HTTP/1.1\r\n", Method::Options),
            (b"CONNECT a:443 HTTP/1.1\r\n", Method::Connect),
            (b"TRACE / HTTP/1.1\r\n", Method::Trace),
        ];
        for (payload, method) in cases {
            assert_eq!(check(payload), Some(method), "{:?}", payload);
        }
    }

    #[test]
    fn near_misses_are_not_request_starts() {
        for payload in [
            &b"GETX / HTTP/1.1"[..],
            b"get / HTTP/1.1",
            b"GET/ HTTP/1.1",
            b"POS / HTTP/1.1",
            b"PUTS / HTTP/1.1",
            b"OPTIONSX",
            b"HTTP/1.1 200 OK",
            b"\x16\x03\x01\x02\x00",
            b"PRI * HTTP/2.0",
            b"",
            b"GET",
        ] {
            assert_eq!(check(payload), None, "{:?}", payload);
        }
    }

    #[test]
    fn bytes_past_the_payload_are_ignored() {
        // "GET " split so that only "GE" is payload: the rest of the word is stale.
        let head = *b"GET /abc";
        assert_eq!(request_method(&head, 2), None);
        assert_eq!(request_method(&head, 4), Some(Method::Get));
        assert_eq!(request_method(b"OPTIONS ", 7), None);
        assert_eq!(request_method(b"OPTIONS ", 8), Some(Method::Options));
    }
}
