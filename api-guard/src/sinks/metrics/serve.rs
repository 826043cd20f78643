//! Answers scrapes at /metrics, bounded: at most [`MAX_CONNECTIONS`] open at
//! once, one render at a time (each walks the client map), and a scrape that
//! cannot be rendered within [`SCRAPE_TIMEOUT`] is answered 503. Renders run
//! off the async runtime, on the metrics' own map handles, so however many
//! clients scrape, nothing else in the daemon waits for them.

use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    time::{Instant, timeout_at},
};

use super::Metrics;

/// How long a scrape may wait for its turn and render before it is answered
/// 503 (Prometheus's own default scrape timeout).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Renders at once: they take turns on the kernel collector anyway.
const RENDERS_AT_ONCE: usize = 1;

/// Connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 64;

/// Serves /metrics on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let renders = Arc::new(Semaphore::new(RENDERS_AT_ONCE));
    // Connections are tracked so that stopping ends them too.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if conns.len() >= MAX_CONNECTIONS {
                    drop(stream);
                    continue;
                }
                let (metrics, renders) = (metrics.clone(), renders.clone());
                conns.spawn(async move {
                    let service = service_fn(move |req| handle(req, metrics.clone(), renders.clone()));
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
    renders: Arc<Semaphore>,
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
    let busy = || {
        response(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            b"busy: too many scrapes at once\n".to_vec(),
        )
    };
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    let Ok(Ok(permit)) = timeout_at(deadline, renders.acquire_owned()).await else {
        return Ok(busy());
    };
    // The permit goes with the render: a render whose scrape timed out still
    // holds its turn until it ends, so renders never pile up.
    let render = tokio::task::spawn_blocking(move || {
        let _turn = permit;
        metrics.render()
    });
    Ok(match timeout_at(deadline, render).await {
        Ok(Ok(Ok(body))) => response(StatusCode::OK, "text/plain; version=0.0.4", body),
        Err(_) => busy(),
        _ => response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            b"cannot render metrics\n".to_vec(),
        ),
    })
}
