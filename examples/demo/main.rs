//! The tower-sse demo hub: a live feed, a publish form, a connection count and an LLM-style
//! typewriter, all over Server-Sent Events.
//!
//! Run with `cargo run --release --example demo --features metrics,tracing`, then open http://127.0.0.1:3000 in a
//! browser. `ADDR=0.0.0.0:8080` changes the address; `HEARTBEAT_MS`, `RETRY_MS`,
//! `TOKEN_DELAY_MS` and `LIVENESS_MS` change the timings, `MAX_BODY_BYTES` the largest
//! accepted request body (default 1 MiB).
//!
//! It is served as `examples/production.rs` is, by the same code (`../shared/server.rs`):
//! hyper with a header-read timeout (`HEADER_TIMEOUT_MS`, default 5000), a `GuardedListener`
//! that aborts connections whose writes stall (`STALL_TIMEOUT_MS`, 15000) and answers `503`
//! past `MAX_CONNECTIONS` (four fifths of `ulimit -n`, at most 10,000), and a whole-body
//! deadline for request bodies (`BODY_TIMEOUT_MS`, 10000). Event streams are capped below
//! that (`MAX_STREAMS`, 85 % of it) and so are streamed answers (`MAX_ANSWERS`, 5 %), so
//! that `/stats` and `/publish` answer when they are full.
//!
//! `GET /metrics` serves the crate's metrics in Prometheus text format. Logs go to stdout
//! through `tracing-subscriber`, filtered by `RUST_LOG` (default `info`;
//! `RUST_LOG=tower_sse=debug` shows every stream open and close with its reason).
//!
//! With `REDIS_URL`, demos on several addresses are one hub (`REDIS_HUB` names it, default
//! `tower-sse-demo`): a publish, a key send, a completion reaches every instance, and a
//! browser resumes on any of them.
//!
//! ```text
//! redis-server --port 6379 --save '' &
//! REDIS_URL=redis://127.0.0.1:6379 ADDR=127.0.0.1:3001 cargo run --release --example demo --features metrics,tracing &
//! REDIS_URL=redis://127.0.0.1:6379 ADDR=127.0.0.1:3002 cargo run --release --example demo --features metrics,tracing
//! ```
//!
//! Try it from a terminal too:
//!
//! ```text
//! curl -N http://127.0.0.1:3000/events
//! printf 'two\nlines' | curl -s --data-binary @- 'http://127.0.0.1:3000/publish?event=message'
//! curl -N 'http://127.0.0.1:3000/typewriter?text=hello%20there'
//! curl -N http://127.0.0.1:3000/v1/chat/completions -H 'content-type: application/json' \
//!   -d '{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
//! curl -s http://127.0.0.1:3000/stats
//! curl -N 'http://127.0.0.1:3000/ticker?key=t1&interval_ms=500'   # in one terminal...
//! curl -s --data-binary 'stopped' 'http://127.0.0.1:3000/complete?key=t1'   # ...then this
//! ```
//!
//! Ctrl-C (or SIGTERM) drains: every open stream gets the `bye` event, and the process
//! exits within two seconds.

mod app;
#[path = "../shared/server.rs"]
mod server;

/// jemalloc, whose background thread hands freed pages back to the system within seconds
/// of a flood of connections closing, where glibc's malloc keeps them mapped: measured with
/// `scripts/demo-memory.py` (README, "The demo hub").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;
use tower_sse::backplane::RedisBackplane;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// How long open connections get to finish once shutdown starts. Streams end at once on
/// cancellation; the bound only guards against a stuck client.
const GRACE: Duration = Duration::from_millis(1500);

/// How often the Prometheus recorder's histograms are drained into their summaries, which
/// keeps what they hold bounded between scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Prints `message` and exits with `code`: the demo cannot start.
fn fail(code: i32, message: impl std::fmt::Display) -> ! {
    eprintln!("{message}");
    std::process::exit(code)
}

/// The demo's own settings from the environment, over `defaults`.
fn settings_from_env(server: &server::Settings) -> Result<app::Settings, String> {
    let defaults = app::Settings::default();
    let connections = server.max_connections;
    let shares = app::Caps::for_connections(connections);
    let caps = app::Caps {
        connections,
        streams: server::env_number("MAX_STREAMS")?.unwrap_or(shares.streams),
        answers: server::env_number("MAX_ANSWERS")?.unwrap_or(shares.answers),
    };
    caps.check()?;
    let ms = |name, default: Duration| server::env_millis(name, default.as_millis() as u64);
    Ok(app::Settings {
        heartbeat: ms("HEARTBEAT_MS", defaults.heartbeat)?,
        retry: ms("RETRY_MS", defaults.retry)?,
        token_delay: ms("TOKEN_DELAY_MS", defaults.token_delay)?,
        liveness: ms("LIVENESS_MS", defaults.liveness)?,
        body: app::body::Limits {
            max: server::env_number("MAX_BODY_BYTES")?.unwrap_or(defaults.body.max),
            time: server.body_timeout,
            ..defaults.body
        },
        label: String::new(),
        caps,
    })
}

#[tokio::main]
async fn main() {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env()
        .unwrap_or_else(|e| fail(2, format!("RUST_LOG: {e}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    start_purging();
    let server_settings = server::Settings::from_env().unwrap_or_else(|e| fail(2, e));
    let mut settings = settings_from_env(&server_settings).unwrap_or_else(|e| fail(2, e));

    // Installed before the manager and the layer are built: they register their metrics then.
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .unwrap_or_else(|e| fail(1, format!("cannot install the metrics recorder: {e}")));
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });

    let listener = server_settings
        .bind()
        .await
        .unwrap_or_else(|e| fail(1, format!("cannot listen on {}: {e}", server_settings.addr)));
    let local = listener
        .local_addr()
        .unwrap_or_else(|e| fail(1, format!("no local address: {e}")));
    settings.label = local.to_string();
    let builder = app::manager_builder_for(&settings).on_close(|conn, reason| {
        if reason != tower_sse::manager::CloseReason::ClientGone {
            tracing::info!(connection = %conn.id(), %reason, "stream closed");
        }
    });
    let mut extras = app::Extras {
        metrics: Some(metrics),
        listener: Some(listener.stats()),
        ..app::Extras::default()
    };
    let manager = match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        None => builder.build(),
        Some(url) => {
            let name = std::env::var("REDIS_HUB").unwrap_or_else(|_| "tower-sse-demo".to_owned());
            let backplane = RedisBackplane::builder(&url)
                .hub(&name)
                .connect()
                .await
                .unwrap_or_else(|e| fail(1, format!("cannot reach Redis at {url}: {e}")));
            println!(
                "instance {:08x} of hub {name:?} on {url}",
                backplane.instance()
            );
            extras.backplane = Some(backplane.clone());
            builder.backplane(backplane).build()
        }
    };
    tracing::info!(caps = ?settings.caps, server = ?server_settings, "limits");
    let hub = app::Hub::with(manager, settings, extras);
    let manager = hub.manager.clone();
    let shutdown = CancellationToken::new();
    app::spawn_connection_counter(hub.clone(), shutdown.clone());
    // New connections are refused once shutdown starts; open streams get the layer's farewell.
    tokio::spawn(manager.clone().shutdown_on(shutdown.clone()));

    // The line tests and scripts wait for (stdout, before any request is served).
    println!("tower-sse demo on http://{local}");

    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining open streams");
        signal.cancel();
    });

    let router = app::router(hub, shutdown.clone());
    if server::serve(listener, router, &server_settings, shutdown, GRACE).await {
        tracing::info!("drained");
    } else {
        tracing::warn!("drain took too long; exiting anyway");
    }
}

/// Starts jemalloc's background thread, which purges freed pages as they age (dirty pages
/// after `dirty_decay_ms`, 10 s by default) even while the server is idle; without it,
/// jemalloc purges only when a thread calls into it, so a server that went quiet after a
/// flood keeps the flood's pages. Unless `_RJEM_MALLOC_CONF` says otherwise, which it reads
/// first (`background_thread:true,dirty_decay_ms:1000` gives memory back within 2 s).
fn start_purging() {
    #[cfg(not(target_env = "msvc"))]
    {
        if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
            return;
        }
        if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
            tracing::warn!("jemalloc's background thread did not start: {e}");
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
