//! The API access log: one JSON line per sampled request, field names from
//! OpenTelemetry's semantic conventions. Buffered; the daemon flushes it every
//! second and on shutdown, and reopens it on SIGHUP (logrotate's convention).

use std::{
    fmt::Display,
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    pipeline::http::{AuthScheme, Completeness, RequestHead},
    sources::RequestSample,
};

/// One access log line. Credential values never get here: the request parser
/// keeps only whether a credential was present and its scheme.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339, UTC, nanoseconds.
    #[serde(serialize_with = "display")]
    pub timestamp: humantime::Rfc3339Timestamp,
    #[serde(rename = "client.address")]
    pub client_address: IpAddr,
    #[serde(rename = "client.port")]
    pub client_port: u16,
    /// The Host header without its port, as OpenTelemetry asks.
    #[serde(rename = "server.address", skip_serializing_if = "Option::is_none")]
    pub server_address: Option<&'a str>,
    #[serde(rename = "server.port")]
    pub server_port: u16,
    #[serde(rename = "network.local.address")]
    pub local_address: IpAddr,
    #[serde(rename = "network.type")]
    pub network_type: &'static str,
    #[serde(rename = "network.protocol.name")]
    pub protocol: &'static str,
    #[serde(
        rename = "network.protocol.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub protocol_version: Option<&'static str>,
    #[serde(rename = "http.request.method")]
    pub method: &'a str,
    #[serde(rename = "url.path")]
    pub path: &'a str,
    #[serde(rename = "url.query", skip_serializing_if = "Option::is_none")]
    pub query: Option<&'a str>,
    #[serde(
        rename = "user_agent.original",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_agent: Option<&'a str>,
    #[serde(
        rename = "http.request.body.size",
        skip_serializing_if = "Option::is_none"
    )]
    pub body_size: Option<u64>,
    #[serde(
        rename = "api_guard.interface",
        skip_serializing_if = "Option::is_none"
    )]
    pub interface: Option<&'a str>,
    #[serde(rename = "api_guard.verdict")]
    pub verdict: &'static str,
    #[serde(rename = "api_guard.auth.present")]
    pub auth_present: bool,
    #[serde(rename = "api_guard.auth.scheme")]
    pub auth_scheme: &'static str,
    #[serde(
        rename = "api_guard.auth.header",
        skip_serializing_if = "Option::is_none"
    )]
    pub auth_header: Option<&'a str>,
    /// The `--key-header` value's fingerprint (its bucket's), never the key.
    #[serde(rename = "api_guard.key", skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Set when --require-auth is on and the request had no credential.
    #[serde(
        rename = "api_guard.auth.missing",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub auth_missing: bool,
    /// "complete", or "truncated" when the head was longer than the capture.
    #[serde(rename = "api_guard.head")]
    pub head: &'static str,
    #[serde(rename = "api_guard.payload.size")]
    pub payload_size: u32,
    /// "https" for a head decrypted by the libssl uprobes, else "http".
    #[serde(rename = "url.scheme")]
    pub scheme: &'static str,
    /// Where it was seen: "tc_ingress" (packets) or "tls_uprobe" (plaintext).
    #[serde(rename = "api_guard.source")]
    pub source: &'static str,
    /// The route template (`pipeline::routes`).
    #[serde(rename = "http.route", skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    #[serde(
        rename = "http.response.status_code",
        skip_serializing_if = "Option::is_none"
    )]
    pub status: Option<u16>,
    /// Seconds from the request's arrival at ingress to the response's first
    /// byte at egress.
    #[serde(
        rename = "http.server.request.duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<f64>,
    /// How the response was found: "joined", or why not ("unpaired": the
    /// kernel could not number the request; "timeout"; "evicted").
    #[serde(rename = "api_guard.response")]
    pub response: &'static str,
}

impl<'a> AccessRecord<'a> {
    /// The line for a sampled request and what the parser made of it.
    pub fn of(
        sample: &RequestSample,
        head: &'a RequestHead<'a>,
        timestamp: humantime::Rfc3339Timestamp,
        interface: Option<&'a str>,
        auth_missing: bool,
        tls: bool,
    ) -> Self {
        AccessRecord {
            timestamp,
            client_address: sample.client,
            client_port: sample.client_port,
            server_address: head.host.as_deref().map(strip_port),
            server_port: sample.server_port,
            local_address: sample.server,
            network_type: if sample.ipv6 { "ipv6" } else { "ipv4" },
            protocol: "http",
            protocol_version: match head.version {
                Some(0) => Some("1.0"),
                Some(1) => Some("1.1"),
                _ => None,
            },
            method: head.method,
            path: head.path,
            query: head.query.as_deref(),
            user_agent: head.user_agent.as_deref(),
            body_size: head.content_length,
            interface,
            verdict: super::verdict_name(sample.verdict),
            auth_present: head.auth != AuthScheme::None,
            auth_scheme: head.auth.as_str(),
            auth_header: head.auth_header,
            key: head.key_fingerprint.map(|f| format!("{f:08x}")),
            auth_missing,
            head: match head.completeness {
                Completeness::Complete => "complete",
                Completeness::Truncated => "truncated",
            },
            payload_size: sample.payload_len,
            scheme: if tls { "https" } else { "http" },
            source: if tls { "tls_uprobe" } else { "tc_ingress" },
            route: None,
            status: None,
            duration: None,
            response: "unpaired",
        }
    }
}

/// "api.example:8080" → "api.example"; "[2001:db8::1]:80" → "2001:db8::1".
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// Serializes through Display, straight into the output (no String in between).
fn display<T: Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

enum Target {
    Stdout,
    File(PathBuf),
}

pub struct AccessLog {
    target: Target,
    out: BufWriter<Box<dyn Write + Send>>,
    /// Lines written since start.
    pub lines: u64,
}

impl AccessLog {
    /// Opens `spec`: a path (appended to, created 0640), or "-" for stdout.
    pub fn open(spec: &Path) -> Result<Self> {
        let target = if spec == Path::new("-") {
            Target::Stdout
        } else {
            Target::File(spec.to_path_buf())
        };
        let out = BufWriter::with_capacity(64 * 1024, open_target(&target)?);
        Ok(Self {
            target,
            out,
            lines: 0,
        })
    }

    pub fn write(&mut self, record: &AccessRecord<'_>) -> Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        self.lines += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes, then opens the file again by name (after logrotate moved it).
    pub fn reopen(&mut self) -> Result<()> {
        self.out.flush()?;
        self.out = BufWriter::with_capacity(64 * 1024, open_target(&self.target)?);
        Ok(())
    }
}

fn open_target(target: &Target) -> Result<Box<dyn Write + Send>> {
    Ok(match target {
        Target::Stdout => Box::new(io::stdout()),
        Target::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path)
                .with_context(|| format!("cannot open the access log {}", path.display()))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("api.example:8080"), "api.example");
        assert_eq!(strip_port("api.example"), "api.example");
        assert_eq!(strip_port("[2001:db8::1]:80"), "2001:db8::1");
        assert_eq!(strip_port("198.18.0.1"), "198.18.0.1");
    }
}
