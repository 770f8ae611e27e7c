//! The production server setup, shared by `examples/production.rs` and the demo hub
//! (`examples/demo/main.rs`), which include this file by `#[path]`; tested with real sockets by
//! `tests/listener_sockets.rs` and `tests/demo_server.rs`. Every resource a client can make
//! the server hold is bounded in time, and the number of connections is capped below the
//! descriptor limit:
//!
//! - hyper-util's server builder with a timer, so hyper's header-read timeout applies
//!   (`axum::serve` runs hyper without a timer: a client that sends its request one byte a
//!   second holds its connection forever);
//! - a bound on hyper-util's protocol detection, which reads the first bytes before hyper's
//!   header timer starts;
//! - a `GuardedListener`: a connection whose writes make no progress for the stall timeout
//!   is aborted (a client that stopped reading no longer holds its socket and hyper's
//!   buffer), and past the cap new connections get `503` with `Retry-After`;
//! - graceful shutdown: once the token is cancelled, no connection is accepted and open ones
//!   get a grace period to finish.
//!
//! The request-body timeout is the application's (a tower-http layer in
//! `examples/production.rs`, a whole-body deadline in the demo's `body.rs`): it is given
//! here so that both read it from the same environment variable.
//!
//! Environment ([`Settings::from_env`]): `ADDR` (default `127.0.0.1:3000`),
//! `HEADER_TIMEOUT_MS` (5000), `STALL_TIMEOUT_MS` (15000), `BODY_TIMEOUT_MS` (10000),
//! `MAX_CONNECTIONS` (four fifths of the soft descriptor limit, at most 10,000; see
//! [`default_max_connections`]).

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tower_sse::listener::{GuardedListener, GuardedStream};

/// The server's bounds, from the environment.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) addr: String,
    /// A request's headers must arrive within this time of the connection (or of the end of
    /// the previous request on a kept-alive connection).
    pub(crate) header_timeout: Duration,
    /// A connection whose writes make no progress for this long is aborted.
    pub(crate) stall_timeout: Duration,
    /// A request body must arrive within this time.
    pub(crate) body_timeout: Duration,
    /// Open connections past this are answered `503` and closed.
    pub(crate) max_connections: usize,
}

/// The cap when the descriptor limit is high (or cannot be read).
const MAX_CONNECTIONS_CEILING: usize = 10_000;

impl Settings {
    /// Reads the settings; a value that is set but not a number is an error that names it.
    pub(crate) fn from_env() -> Result<Settings, String> {
        Ok(Settings {
            addr: std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into()),
            header_timeout: env_millis("HEADER_TIMEOUT_MS", 5_000)?,
            stall_timeout: env_millis("STALL_TIMEOUT_MS", 15_000)?,
            body_timeout: env_millis("BODY_TIMEOUT_MS", 10_000)?,
            max_connections: env_number("MAX_CONNECTIONS")?.unwrap_or_else(default_max_connections),
        })
    }

    /// The listener with the stall guard and the cap.
    pub(crate) async fn bind(&self) -> std::io::Result<GuardedListener> {
        Ok(GuardedListener::bind(&self.addr)
            .await?
            .stall_timeout(self.stall_timeout)
            .max_connections(self.max_connections)
            .tcp_nodelay(true))
    }
}

/// A number from the environment: `None` when unset or empty, an error naming the variable
/// when it is not a number.
pub(crate) fn env_number<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(None),
    }
}

/// A duration in milliseconds from the environment, `default_ms` when unset.
pub(crate) fn env_millis(name: &str, default_ms: u64) -> Result<Duration, String> {
    Ok(Duration::from_millis(
        env_number(name)?.unwrap_or(default_ms),
    ))
}

/// Four fifths of the process's soft limit on open files (`ulimit -n`, read from
/// `/proc/self/limits` on Linux), at most 10,000; 10,000 where it cannot be read. The fifth
/// left over is for everything else that needs a descriptor: the listener, refusals being
/// answered (at most 64 at once), a Redis connection, log files.
pub(crate) fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))?
                .to_owned();
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
    match soft {
        Some(soft) => (soft / 5 * 4).min(MAX_CONNECTIONS_CEILING),
        None => MAX_CONNECTIONS_CEILING,
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then gives open connections
/// `grace` to finish. Returns whether they all did.
pub(crate) async fn serve(
    listener: GuardedListener,
    app: Router,
    settings: &Settings,
    shutdown: CancellationToken,
    grace: Duration,
) -> bool {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Without a free descriptor nothing can be accepted; let connections close.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let builder = builder.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let header_timeout = settings.header_timeout;
        tokio::spawn(async move {
            if !protocol_known(&stream, header_timeout).await {
                return; // nothing useful arrived in time: close
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(grace) => false,
    }
}

/// Waits, at most `within`, until the first bytes tell HTTP/1 from HTTP/2.
///
/// hyper-util's builder reads them before handing the connection to hyper, and hyper's
/// header-read timer starts only then: a client that connects and sends nothing, or sends
/// the HTTP/2 preface a byte at a time, would otherwise hold its connection forever.
async fn protocol_known(stream: &GuardedStream, within: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let known = async {
        let mut first = [0u8; 24];
        loop {
            match stream.get_ref().peek(&mut first).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == PREFACE.len() || first[..n] != PREFACE[..n] => return true,
                // A prefix of the preface so far: look again shortly (peek does not wait for
                // more bytes than it already has).
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    tokio::time::timeout(within, known).await.unwrap_or(false)
}
