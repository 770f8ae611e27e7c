//! The tower-sse demo hub: a live feed, a publish form, a connection count and an LLM-style
//! typewriter, all over Server-Sent Events.
//!
//! Run with `cargo run --release --example demo`, then open http://127.0.0.1:3000 in a
//! browser. `ADDR=0.0.0.0:8080` changes the address; `HEARTBEAT_MS`, `RETRY_MS`,
//! `TOKEN_DELAY_MS` and `LIVENESS_MS` change the timings, `MAX_BODY_BYTES` the largest
//! accepted request body (default 1 MiB).
//!
//! With `REDIS_URL`, demos on several addresses are one hub (`REDIS_HUB` names it, default
//! `tower-sse-demo`): a publish, a key send, a completion reaches every instance, and a
//! browser resumes on any of them.
//!
//! ```text
//! redis-server --port 6379 --save '' &
//! REDIS_URL=redis://127.0.0.1:6379 ADDR=127.0.0.1:3001 cargo run --release --example demo &
//! REDIS_URL=redis://127.0.0.1:6379 ADDR=127.0.0.1:3002 cargo run --release --example demo
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

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tower_sse::backplane::RedisBackplane;

fn env_ms(name: &str, default: Duration) -> Duration {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(default, Duration::from_millis)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    let defaults = app::Settings::default();
    let settings = app::Settings {
        heartbeat: env_ms("HEARTBEAT_MS", defaults.heartbeat),
        retry: env_ms("RETRY_MS", defaults.retry),
        token_delay: env_ms("TOKEN_DELAY_MS", defaults.token_delay),
        liveness: env_ms("LIVENESS_MS", defaults.liveness),
        body: app::body::Limits {
            max: std::env::var("MAX_BODY_BYTES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.body.max),
            ..defaults.body
        },
        label: local.to_string(),
    };
    let builder = app::manager_builder().on_close(|conn, reason| {
        if reason != tower_sse::manager::CloseReason::ClientGone {
            println!("connection {} closed: {reason}", conn.id());
        }
    });
    let hub = match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        None => app::Hub::new(builder.build(), settings),
        Some(url) => {
            let name = std::env::var("REDIS_HUB").unwrap_or_else(|_| "tower-sse-demo".to_owned());
            let backplane = match RedisBackplane::builder(&url).hub(&name).connect().await {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("cannot reach Redis at {url}: {e}");
                    std::process::exit(1);
                }
            };
            println!(
                "instance {:08x} of hub {name:?} on {url}",
                backplane.instance()
            );
            let manager = builder.backplane(backplane.clone()).build();
            app::Hub::with_backplane(manager, settings, backplane)
        }
    };
    let manager = hub.manager.clone();
    let shutdown = CancellationToken::new();
    app::spawn_connection_counter(hub.clone(), shutdown.clone());
    // New connections are refused once shutdown starts; open streams get the layer's farewell.
    tokio::spawn(manager.clone().shutdown_on(shutdown.clone()));

    println!("tower-sse demo on http://{local}");

    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        println!("shutting down: draining open streams");
        signal.cancel();
    });

    let server = axum::serve(listener, app::router(hub, shutdown.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    // Streams end at once on cancellation; the bound only guards against a stuck client.
    match tokio::time::timeout(Duration::from_millis(1500), server).await {
        Ok(_) => println!("drained"),
        Err(_) => println!("drain took too long; exiting anyway"),
    }
    Ok(())
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
