//! What a production service installs when it turns the crate's `metrics` and `tracing`
//! features on, so that the benches built with them measure the real cost (issue 14) and not
//! the facades' no-op defaults:
//!
//! - feature `metrics`: the Prometheus recorder of `metrics-exporter-prometheus`, installed
//!   globally without its HTTP listener (`install_recorder`); a thread runs its upkeep every
//!   5 s, as the exporter's own task would.
//! - feature `tracing`: a `tracing-subscriber` `fmt` subscriber filtered at INFO through an
//!   `EnvFilter` (what `RUST_LOG=info` gives), writing to a sink.
//!
//! Without either feature this does nothing. Call [`install`] before building a manager or a
//! layer: they register their metrics when built.

/// Installs the recorder and the subscriber of the features this bench was built with, once.
/// Returns what was installed, for the bench's first line.
pub(crate) fn install() -> &'static str {
    static INSTALLED: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        #[cfg(feature = "metrics")]
        {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("no other recorder is installed");
            std::thread::spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                handle.run_upkeep();
            });
        }
        #[cfg(feature = "tracing")]
        {
            use tracing_subscriber::layer::SubscriberExt as _;
            let subscriber = tracing_subscriber::registry()
                .with(tracing_subscriber::EnvFilter::new("info"))
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink));
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other subscriber is installed");
        }
        match (cfg!(feature = "metrics"), cfg!(feature = "tracing")) {
            (true, true) => "Prometheus recorder and an INFO tracing subscriber installed",
            (true, false) => "Prometheus recorder installed",
            (false, true) => "INFO tracing subscriber installed",
            (false, false) => "no telemetry (features metrics and tracing off)",
        }
    })
}
