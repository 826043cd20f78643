//! Prometheus metrics at `--metrics-addr`/metrics. Kernel counters are read from
//! the maps at scrape time; the sampler's counters live here. Every label takes
//! values from a fixed set (verdicts, methods, schemes) except the top-clients
//! gauge, which holds at most `--top-clients` clients.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Result;
use api_guard_common::{
    counters::{Event, KINDS, Kind, VERDICTS},
    maps::NETWORK_SLOTS,
};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::warn;

use crate::{clock::monotonic_ns, loader::Datapath, maps::KernelMaps, request::AuthScheme};
use api_guard_common::http::Method;

pub struct Metrics {
    pub registry: Registry,
    /// Sampled requests by method and credential scheme.
    pub sampled: IntCounterVec,
    /// Samples that were not a complete request head, by kind.
    pub parse_errors: IntCounterVec,
    /// Sampled requests without a credential (with --require-auth).
    pub unauthenticated: IntCounter,
    /// Clients blocked by --require-auth block.
    pub auth_blocks: IntCounter,
    /// Request rate of the busiest clients.
    pub top_clients: GaugeVec,
    /// `sampled` children by (method, scheme), resolved once: a label lookup per
    /// sample hashes and locks, and samples come by the hundred thousand.
    sampled_by: HashMap<(&'static str, &'static str), IntCounter>,
}

impl Metrics {
    pub fn new(datapath: Arc<Mutex<Datapath>>, max_clients: u32) -> Result<Self> {
        let registry = Registry::new();
        let sampled = IntCounterVec::new(
            Opts::new(
                "api_guard_sampled_requests_total",
                "Sampled request starts by method and credential scheme",
            ),
            &["method", "auth"],
        )?;
        let parse_errors = IntCounterVec::new(
            Opts::new(
                "api_guard_parse_errors_total",
                "Samples that were not a complete HTTP/1.x request head",
            ),
            &["kind"],
        )?;
        let unauthenticated = IntCounter::new(
            "api_guard_unauthenticated_requests_total",
            "Sampled requests without a credential header (with --require-auth)",
        )?;
        let auth_blocks = IntCounter::new(
            "api_guard_auth_blocks_total",
            "Clients blocked for requests without credentials",
        )?;
        let top_clients = GaugeVec::new(
            Opts::new(
                "api_guard_top_client_requests_per_second",
                "Request rate of the busiest clients",
            ),
            &["client"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("api_guard_build_info", "api-guard's version"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every series a dashboard expects exists from the start, at zero.
        for kind in ["truncated", "not_http"] {
            parse_errors.with_label_values(&[kind]);
        }
        registry.register(Box::new(sampled.clone()))?;
        registry.register(Box::new(parse_errors.clone()))?;
        registry.register(Box::new(unauthenticated.clone()))?;
        registry.register(Box::new(auth_blocks.clone()))?;
        registry.register(Box::new(top_clients.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(KernelCollector::new(datapath, max_clients)?))?;
        let methods = Method::ALL.iter().map(|m| m.as_str()).chain(["OTHER"]);
        let sampled_by = methods
            .flat_map(|m| AuthScheme::ALL.iter().map(move |a| (m, a.as_str())))
            .map(|(m, a)| ((m, a), sampled.with_label_values(&[m, a])))
            .collect();
        Ok(Self {
            sampled_by,
            registry,
            sampled,
            parse_errors,
            unauthenticated,
            auth_blocks,
            top_clients,
        })
    }

    /// Counts a sampled request; `method` is a bounded label (see sampler).
    pub fn count_sampled(&self, method: &'static str, auth: AuthScheme) {
        match self.sampled_by.get(&(method, auth.as_str())) {
            Some(c) => c.inc(),
            None => self
                .sampled
                .with_label_values(&[method, auth.as_str()])
                .inc(),
        }
    }

    pub fn render(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// Reads the kernel's counters and maps when Prometheus scrapes.
struct KernelCollector {
    datapath: Arc<Mutex<Datapath>>,
    max_clients: u32,
    by_kind: Vec<(Kind, IntCounterVec)>,
    samples: IntCounter,
    samples_lost: IntCounter,
    refused: IntCounter,
    evicted: IntCounter,
    tracked: IntGauge,
    blocked: IntGauge,
    capacity: IntGaugeVec,
    descs: Vec<Desc>,
}

impl KernelCollector {
    fn new(datapath: Arc<Mutex<Datapath>>, max_clients: u32) -> Result<Self> {
        let by_kind = KINDS
            .iter()
            .map(|&k| {
                let name = format!("api_guard_{}_total", k.name());
                let help = format!("{} to the API ports by the kernel's verdict", k.name());
                Ok((k, IntCounterVec::new(Opts::new(name, help), &["verdict"])?))
            })
            .collect::<Result<Vec<_>>>()?;
        let samples = IntCounter::new(
            "api_guard_samples_total",
            "Request heads sampled into the ring buffer",
        )?;
        let samples_lost = IntCounter::new(
            "api_guard_samples_lost_total",
            "Samples lost because the ring buffer was full",
        )?;
        let evicted = IntCounter::new(
            "api_guard_clients_evicted_total",
            "Clients evicted from the full client map (least recently seen first)",
        )?;
        let refused = IntCounter::new(
            "api_guard_clients_refused_total",
            "Packets passed without per-client limits because the full client map refused a new client",
        )?;
        let tracked = IntGauge::new(
            "api_guard_tracked_clients",
            "Clients in the kernel's client map",
        )?;
        let blocked = IntGauge::new(
            "api_guard_blocked_clients",
            "Clients and networks blocked now",
        )?;
        let capacity = IntGaugeVec::new(
            Opts::new("api_guard_map_capacity", "Entries each map holds at most"),
            &["map"],
        )?;
        let mut descs = Vec::new();
        for (_, v) in &by_kind {
            descs.extend(v.desc().into_iter().cloned());
        }
        for c in [&samples, &samples_lost, &evicted, &refused] {
            descs.extend(c.desc().into_iter().cloned());
        }
        for g in [&tracked, &blocked] {
            descs.extend(g.desc().into_iter().cloned());
        }
        descs.extend(capacity.desc().into_iter().cloned());
        Ok(Self {
            datapath,
            max_clients,
            by_kind,
            samples,
            samples_lost,
            evicted,
            refused,
            tracked,
            blocked,
            capacity,
            descs,
        })
    }

    fn refresh(&self, dp: &Datapath) -> Result<()> {
        let counters = dp.counters()?;
        for (kind, vec) in &self.by_kind {
            vec.reset();
            for v in VERDICTS {
                vec.with_label_values(&[v.name()])
                    .inc_by(counters.get(*kind, v));
            }
        }
        set_counter(&self.samples, dp.event(Event::Sampled)?);
        set_counter(&self.samples_lost, dp.event(Event::SamplesLost)?);
        set_counter(&self.refused, dp.event(Event::ClientsRefused)?);
        let clients = dp.clients()?;
        let now = monotonic_ns();
        set_counter(
            &self.evicted,
            dp.event(Event::ClientsCreated)?
                .saturating_sub(clients.len() as u64),
        );
        self.tracked.set(clients.len() as i64);
        let blocked_clients = clients
            .iter()
            .filter(|c| c.state.blocked_until_ns > now)
            .count();
        let blocked_nets = dp
            .blocks()?
            .iter()
            .filter(|(_, _, until)| *until > now)
            .count();
        self.blocked.set((blocked_clients + blocked_nets) as i64);
        self.capacity
            .with_label_values(&["clients"])
            .set(i64::from(self.max_clients));
        for map in ["allow", "deny", "limits", "blocks"] {
            self.capacity
                .with_label_values(&[map])
                .set(i64::from(NETWORK_SLOTS));
        }
        Ok(())
    }
}

/// Moves a counter up to `value`, never down: a derived count (evictions are
/// created − tracked, read in two steps) may dip for a moment, and a dip would
/// read as a counter reset to Prometheus.
fn set_counter(c: &IntCounter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

impl Collector for KernelCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Holding the datapath lock also keeps two scrapes from interleaving.
        let Ok(dp) = self.datapath.lock() else {
            return Vec::new();
        };
        if let Err(e) = self.refresh(&dp) {
            warn!("cannot read the kernel's counters: {e:#}");
            return Vec::new();
        }
        let mut out = Vec::new();
        for (_, v) in &self.by_kind {
            out.extend(v.collect());
        }
        for c in [
            &self.samples,
            &self.samples_lost,
            &self.evicted,
            &self.refused,
        ] {
            out.extend(c.collect());
        }
        for g in [&self.tracked, &self.blocked] {
            out.extend(g.collect());
        }
        out.extend(self.capacity.collect());
        out
    }
}

/// Request rates from two snapshots of the client map, for the top-clients gauge.
pub struct TopClients {
    k: usize,
    last: Option<(Instant, HashMap<IpAddr, u64>)>,
}

impl TopClients {
    pub fn new(k: u32) -> Self {
        Self {
            k: k as usize,
            last: None,
        }
    }

    /// Takes a snapshot and updates the gauge with the K highest rates since the
    /// previous one.
    pub fn update(&mut self, dp: &Datapath, gauge: &GaugeVec) -> Result<()> {
        let now = Instant::now();
        let snapshot: HashMap<IpAddr, u64> = dp
            .clients()?
            .into_iter()
            .map(|c| (c.addr, c.state.requests))
            .collect();
        if let Some((then, before)) = &self.last {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            let rates = snapshot
                .iter()
                // A client new since the last snapshot started from zero.
                .map(|(addr, n)| {
                    let b = before.get(addr).copied().unwrap_or(0);
                    (*addr, n.saturating_sub(b) as f64 / secs)
                })
                .filter(|(_, r)| *r > 0.0);
            gauge.reset();
            for (addr, rate) in top_k(rates, self.k) {
                gauge.with_label_values(&[&addr.to_string()]).set(rate);
            }
        }
        self.last = Some((now, snapshot));
        Ok(())
    }
}

/// The `k` largest rates, largest first (ties by address, for stable output).
pub fn top_k(rates: impl Iterator<Item = (IpAddr, f64)>, k: usize) -> Vec<(IpAddr, f64)> {
    let mut all: Vec<(IpAddr, f64)> = rates.collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

/// Serves /metrics on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    // Connections are tracked so that stopping ends them too: each holds the
    // metrics, and so the datapath, which must go before the daemon exits.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let metrics = metrics.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| handle(req, metrics.clone()));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            // Reap finished connections as they end.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => {
                conns.shutdown().await;
                return Ok(());
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = |status: StatusCode, ctype: &str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if req.uri().path() != "/metrics" {
        return Ok(response(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"not found; try /metrics\n".to_vec(),
        ));
    }
    // Reading the maps blocks briefly; keep it off the async workers' toes.
    let rendered = tokio::task::spawn_blocking(move || metrics.render()).await;
    Ok(match rendered {
        Ok(Ok(body)) => response(StatusCode::OK, "text/plain; version=0.0.4", body),
        _ => response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            b"cannot render metrics\n".to_vec(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_busiest() {
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let c: IpAddr = "2001:db8::".parse().unwrap();
        let top = top_k([(a, 1.0), (b, 30.0), (c, 5.0)].into_iter(), 2);
        assert_eq!(top, [(b, 30.0), (c, 5.0)]);
    }
}
