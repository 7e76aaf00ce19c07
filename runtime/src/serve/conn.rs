//! Accepting connections: HTTP/1.1 through hyper with the limits axum's own `serve` leaves out.
//! A client has [`Config::read_timeout`] to send a request's headers, also on an idle keep-alive
//! connection (so slow or silent clients cannot hold sockets forever); at most
//! [`Config::max_connections`] connections are open at once (more are closed on accept, counted
//! in `idpatch_rejected_total{reason="connections"}`), so idle sockets cannot starve the probes
//! of file descriptors. On shutdown no new connection is accepted and open ones finish their
//! current request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::ServerState;

/// Serves `app` on `listener` until `shutdown` completes, then waits for open connections to
/// finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state
                .metrics
                .rejected
                .with_label_values(&["connections"])
                .inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(state.config.read_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    // Open connections finish their requests, but a client still sending its headers or body
    // does not hold the exit past the drain timeout.
    let _ = tokio::time::timeout(state.config.drain_timeout, graceful.shutdown()).await;
}
