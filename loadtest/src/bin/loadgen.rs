//! The load generator: opens thousands of real SSE connections over loopback to a
//! `loadserver` child process and measures what users of an SSE server care about.
//!
//! Run with `cargo run --release -p loadtest --bin loadgen -- --modes tower-sse,axum-broadcast,hyper-bare`
//! after `cargo build --release -p loadtest` (which builds both binaries). It starts the sibling `loadserver`
//! binary itself, one fresh process per scenario, so it knows the pid and reads the server's
//! RSS and CPU time from `/proc`. `scripts/bench.sh` runs everything and writes the report;
//! `--help` lists the options.
//!
//! Scenarios (`--scenarios fanout,latency,idle,slow,churn`), each bounded in time and count:
//!
//! - `fanout`: N clients; a closed loop publishes as fast as the clients keep up, with at most
//!   a window of events outstanding (on average over clients). `single`: one event per
//!   publish and a window of one, so every write carries exactly one event. `pipelined`: one
//!   event per publish with up to 64 in flight, so the server may merge what queued up while
//!   it was busy. `coalesced`: bursts of 64 events per publish, two bursts in flight. Reports
//!   deliveries/s (events read, summed over clients, per second), events per read and
//!   per-event latency. The server's queues (`--fanout-queue`, default 4096) are deep enough
//!   that no client falls out of a broadcast channel.
//! - `latency`: one publish per second; per event, the time from the timestamp in its payload
//!   to the moment the *last* client read it; p50/p99/max over events.
//! - `idle`: N (up to ~19,000) clients, no publishes; server CPU over a window, heartbeats
//!   received, server memory per connection.
//! - `slow`: the `single` fan-out with 0 % and with 1 % of clients that never read after the
//!   headers, alternated over three repetitions (compare medians): the others' deliveries/s
//!   and p99, server RSS sampled over time. Every run first pushes enough data (72 events of
//!   64 KiB, then small ones) that a client that does not read is stuck: its kernel buffers
//!   and the server's queue for it are full.
//! - `churn`: connect, receive one event, close, as fast as possible with bounded concurrency;
//!   then whether open streams, tasks, file descriptors and RSS return to where they started,
//!   and RSS after another round (a leak keeps climbing; an allocator's high-water mark
//!   does not).
//! - `stuck` (issue 12): `--stuck-clients` clients that read the response head and never
//!   again (4 KiB receive buffers), against the server with the crate's `GuardedListener`
//!   (`--stuck-stall-ms`) and without it; a prefill (`--stuck-prefill-events` of 64 KiB, more
//!   than the kernel's buffers hold, then more small ones than the manager's queue holds,
//!   paced) makes every one of them stuck. Server RSS, descriptors and
//!   ESTABLISHED sockets (from `/proc/net/tcp`) are sampled over time.
//! - `flood` (issue 12, "memory that comes back"): `--flood-clients` idle connections opened,
//!   then all closed; server RSS sampled for `--flood-idle-secs` after, against the goal of
//!   2x the pre-flood RSS plus 20 MB. Run it with a `loadserver` built with another allocator
//!   (`--server PATH`) to compare allocators.
//! - `garbage-id` (issue 12): `--garbage-history` events of history, then
//!   `--garbage-clients` connections that never read and send an unknown `Last-Event-ID`;
//!   their RSS per connection against as many idle connections on an identical server
//!   (`--garbage-reading 1`: the garbage-id clients read, to tell the id from the stuck
//!   reader; `--garbage-hello 1`: each idle client gets one event, as each garbage-id client
//!   gets the gap event, to tell the replay from the first event written).
//!
//! Every scenario prints one JSON line on stdout (and appends it to `--out`), and a human
//! summary on stderr. On a shared machine a scenario waits until the machine is idle before
//! it starts, records how much CPU other processes took during it (`other_cpu_pct`), and is
//! measured again (at most `--retries` times) when that exceeds `--max-other-cpu`.
//!
//! Connections bind to source addresses `127.0.0.2..=127.0.0.251` in turn, so ephemeral ports
//! never run out. N must stay below the process's open-file limit: the generator raises its
//! soft limit to the hard one with `prlimit` if it can.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Opts {
    modes: Vec<String>,
    scenarios: Vec<String>,
    server: Option<PathBuf>,
    out: Option<PathBuf>,
    workers: usize,
    connect_concurrency: usize,
    heartbeat_ms: u64,
    queue: usize,
    bytes: usize,
    // fanout
    clients: usize,
    fanout_queue: usize,
    variants: Vec<String>,
    fanout_secs: f64,
    burst: u64,
    burst_window: u64,
    single_window: u64,
    pipeline_window: u64,
    // latency
    latency_clients: usize,
    latency_secs: u64,
    // idle
    idle_clients: usize,
    idle_secs: f64,
    // slow
    slow_clients: usize,
    slow_pct: f64,
    slow_secs: f64,
    slow_bytes: usize,
    slow_prefill_bytes: usize,
    slow_prefill_events: u64,
    slow_reps: u32,
    // churn
    churn_secs: f64,
    churn_concurrency: usize,
    churn_extra_rounds: u32,
    // stuck
    stuck_clients: usize,
    stuck_stall_ms: u64,
    stuck_secs: f64,
    stuck_prefill_events: u64,
    // flood
    flood_clients: usize,
    flood_idle_secs: f64,
    flood_rounds: u32,
    // garbage-id
    garbage_clients: usize,
    garbage_history: u64,
    garbage_bytes: usize,
    /// The garbage-id clients read (a control: what the id costs without the stuck reader).
    garbage_reading: bool,
    /// The idle clients of the garbage-id scenario get one event (a control).
    garbage_hello: bool,
    // backplane (issue 15): the Redis binaries, and the scenarios' sizes
    redis_server: PathBuf,
    redis_benchmark: PathBuf,
    bp_clients: usize,
    bp_rate: f64,
    bp_secs: f64,
    bp_configs: Vec<String>,
    bp_variants: Vec<String>,
    bp_fanout_secs: f64,
    bp_reps: u32,
    bp_cost_clients: Vec<usize>,
    bp_cost_publishes: u64,
    bp_burst: u64,
    bp_inflight: u64,
    bp_rate_reps: u32,
    // a publish round that makes no progress for this long ends the run
    stall_secs: f64,
    // shared machines: wait for this much idle CPU before a scenario, and measure again (up
    // to `retries` times) when other processes used more than `max_other_cpu` % of a core
    quiet_idle_pct: f64,
    max_other_cpu: f64,
    retries: u32,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            modes: vec![
                "tower-sse".into(),
                "axum-broadcast".into(),
                "hyper-bare".into(),
            ],
            scenarios: ["fanout", "latency", "idle", "slow", "churn"]
                .map(String::from)
                .to_vec(),
            server: None,
            out: None,
            workers: 2,
            connect_concurrency: 256,
            heartbeat_ms: 15_000,
            queue: 256,
            bytes: 128,
            clients: 10_000,
            fanout_queue: 4096,
            variants: ["single", "pipelined", "coalesced"]
                .map(String::from)
                .to_vec(),
            fanout_secs: 5.0,
            burst: 64,
            burst_window: 128,
            single_window: 1,
            pipeline_window: 64,
            latency_clients: 10_000,
            latency_secs: 15,
            idle_clients: 19_000,
            idle_secs: 30.0,
            slow_clients: 500,
            slow_pct: 1.0,
            slow_secs: 5.0,
            slow_bytes: 1024,
            slow_prefill_bytes: 65536,
            slow_prefill_events: 72,
            slow_reps: 3,
            churn_secs: 8.0,
            churn_concurrency: 128,
            churn_extra_rounds: 1,
            stuck_clients: 1_000,
            stuck_stall_ms: 2_000,
            stuck_secs: 8.0,
            stuck_prefill_events: 160,
            flood_clients: 15_000,
            flood_idle_secs: 10.0,
            flood_rounds: 1,
            garbage_clients: 1_000,
            garbage_history: 10_000,
            garbage_bytes: 64,
            garbage_reading: false,
            garbage_hello: false,
            redis_server: "redis-server".into(),
            redis_benchmark: "redis-benchmark".into(),
            bp_clients: 10_000,
            bp_rate: 100.0,
            bp_secs: 10.0,
            bp_configs: ["single", "redis-1", "redis-2"].map(String::from).to_vec(),
            bp_variants: ["pipelined", "coalesced"].map(String::from).to_vec(),
            bp_fanout_secs: 5.0,
            bp_reps: 1,
            bp_cost_clients: vec![10, 1_000, 10_000],
            bp_cost_publishes: 500,
            bp_burst: 200_000,
            bp_inflight: 256,
            bp_rate_reps: 3,
            stall_secs: 10.0,
            quiet_idle_pct: 85.0,
            max_other_cpu: 15.0,
            retries: 2,
        }
    }
}

const USAGE: &str = "usage: loadgen [options]
  --modes LIST        tower-sse,axum-broadcast,hyper-bare (also tower-sse-hyper, tokio-raw;
                      MODE:hyper serves an axum router with the bare hyper loop)
  --scenarios LIST    fanout,latency,idle,slow,churn (also stuck, flood, garbage-id,
                      backplane, backplane-cost, backplane-rate)
  --out FILE          append the JSON lines to FILE     --server PATH   the loadserver binary
  --workers 2  --connect-concurrency 256  --heartbeat-ms 15000  --queue 256  --bytes 128
  fanout:   --clients 10000 --fanout-queue 4096 --variants single,pipelined,coalesced
            --fanout-secs 5 --burst 64 --burst-window 128 --single-window 1 --pipeline-window 64
  latency:  --latency-clients 10000 --latency-secs 15
  idle:     --idle-clients 19000 --idle-secs 30
  slow:     --slow-clients 500 --slow-pct 1 --slow-secs 5 --slow-bytes 1024
            --slow-prefill-bytes 65536 --slow-prefill-events 72 --slow-reps 3
  churn:    --churn-secs 8 --churn-concurrency 128 --churn-extra-rounds 1
  stuck:    --stuck-clients 1000 --stuck-stall-ms 2000 --stuck-secs 8 --stuck-prefill-events 160
  flood:    --flood-clients 15000 --flood-idle-secs 10 --flood-rounds 1
  garbage-id: --garbage-clients 1000 --garbage-history 10000 --garbage-bytes 64
            --garbage-reading 0 (1: the clients with a garbage id read, a control)
            --garbage-hello 0 (1: the idle clients get one event, a control)
  backplane: --redis-server redis-server --redis-benchmark redis-benchmark
            --bp-clients 10000 --bp-rate 100 --bp-secs 10 --bp-configs single,redis-1,redis-2
            --bp-variants pipelined,coalesced --bp-fanout-secs 5 --bp-reps 1
            --bp-cost-clients 10,1000,10000 --bp-cost-publishes 500
            --bp-burst 200000 --bp-inflight 256 --bp-rate-reps 3
  other:    --stall-secs 10 --quiet-idle-pct 85 --max-other-cpu 15 --retries 2";

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
            v.parse().map_err(|_| format!("bad value for {flag}: {v}"))
        }
        let list = |v: &str| v.split(',').map(str::to_owned).collect::<Vec<_>>();
        match flag.as_str() {
            "--modes" => o.modes = list(&v),
            "--scenarios" => o.scenarios = list(&v),
            "--server" => o.server = Some(v.into()),
            "--out" => o.out = Some(v.into()),
            "--workers" => o.workers = num::<usize>(&flag, &v)?.max(1),
            "--connect-concurrency" => o.connect_concurrency = num::<usize>(&flag, &v)?.max(1),
            "--heartbeat-ms" => o.heartbeat_ms = num(&flag, &v)?,
            "--queue" => o.queue = num(&flag, &v)?,
            "--bytes" => o.bytes = num(&flag, &v)?,
            "--clients" => o.clients = num(&flag, &v)?,
            "--fanout-queue" => o.fanout_queue = num(&flag, &v)?,
            "--variants" => o.variants = list(&v),
            "--fanout-secs" => o.fanout_secs = num(&flag, &v)?,
            "--burst" => o.burst = num::<u64>(&flag, &v)?.max(1),
            "--burst-window" => o.burst_window = num(&flag, &v)?,
            "--single-window" => o.single_window = num::<u64>(&flag, &v)?.max(1),
            "--pipeline-window" => o.pipeline_window = num::<u64>(&flag, &v)?.max(1),
            "--latency-clients" => o.latency_clients = num(&flag, &v)?,
            "--latency-secs" => o.latency_secs = num(&flag, &v)?,
            "--idle-clients" => o.idle_clients = num(&flag, &v)?,
            "--idle-secs" => o.idle_secs = num(&flag, &v)?,
            "--slow-clients" => o.slow_clients = num(&flag, &v)?,
            "--slow-pct" => o.slow_pct = num(&flag, &v)?,
            "--slow-secs" => o.slow_secs = num(&flag, &v)?,
            "--slow-bytes" => o.slow_bytes = num(&flag, &v)?,
            "--slow-prefill-bytes" => o.slow_prefill_bytes = num(&flag, &v)?,
            "--slow-prefill-events" => o.slow_prefill_events = num(&flag, &v)?,
            "--slow-reps" => o.slow_reps = num::<u32>(&flag, &v)?.max(1),
            "--churn-secs" => o.churn_secs = num(&flag, &v)?,
            "--churn-concurrency" => o.churn_concurrency = num::<usize>(&flag, &v)?.max(1),
            "--churn-extra-rounds" => o.churn_extra_rounds = num(&flag, &v)?,
            "--stuck-clients" => o.stuck_clients = num(&flag, &v)?,
            "--stuck-stall-ms" => o.stuck_stall_ms = num(&flag, &v)?,
            "--stuck-secs" => o.stuck_secs = num(&flag, &v)?,
            "--stuck-prefill-events" => o.stuck_prefill_events = num(&flag, &v)?,
            "--flood-clients" => o.flood_clients = num(&flag, &v)?,
            "--flood-idle-secs" => o.flood_idle_secs = num(&flag, &v)?,
            "--flood-rounds" => o.flood_rounds = num::<u32>(&flag, &v)?.max(1),
            "--garbage-clients" => o.garbage_clients = num(&flag, &v)?,
            "--garbage-history" => o.garbage_history = num(&flag, &v)?,
            "--garbage-bytes" => o.garbage_bytes = num(&flag, &v)?,
            "--garbage-reading" => o.garbage_reading = num::<u8>(&flag, &v)? != 0,
            "--garbage-hello" => o.garbage_hello = num::<u8>(&flag, &v)? != 0,
            "--redis-server" => o.redis_server = v.into(),
            "--redis-benchmark" => o.redis_benchmark = v.into(),
            "--bp-clients" => o.bp_clients = num::<usize>(&flag, &v)?.max(1),
            "--bp-rate" => o.bp_rate = num(&flag, &v)?,
            "--bp-secs" => o.bp_secs = num(&flag, &v)?,
            "--bp-configs" => o.bp_configs = list(&v),
            "--bp-variants" => o.bp_variants = list(&v),
            "--bp-fanout-secs" => o.bp_fanout_secs = num(&flag, &v)?,
            "--bp-reps" => o.bp_reps = num::<u32>(&flag, &v)?.max(1),
            "--bp-cost-clients" => {
                o.bp_cost_clients = list(&v)
                    .iter()
                    .map(|n| num::<usize>(&flag, n))
                    .collect::<Result<_, _>>()?
            }
            "--bp-cost-publishes" => o.bp_cost_publishes = num::<u64>(&flag, &v)?.max(1),
            "--bp-burst" => o.bp_burst = num::<u64>(&flag, &v)?.max(1),
            "--bp-inflight" => o.bp_inflight = num::<u64>(&flag, &v)?.max(1),
            "--bp-rate-reps" => o.bp_rate_reps = num::<u32>(&flag, &v)?.max(1),
            "--stall-secs" => o.stall_secs = num(&flag, &v)?,
            "--quiet-idle-pct" => o.quiet_idle_pct = num(&flag, &v)?,
            "--max-other-cpu" => o.max_other_cpu = num(&flag, &v)?,
            "--retries" => o.retries = num(&flag, &v)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    o.burst_window = o.burst_window.max(o.burst);
    Ok(o)
}

fn main() {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(opts)) {
        Ok(0) => {}
        Ok(failures) => {
            eprintln!("loadgen: {failures} scenario(s) failed");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(opts: Opts) -> Result<usize> {
    let server_bin = match &opts.server {
        Some(p) => p.clone(),
        None => sibling_binary("loadserver")?,
    };
    let limit = nofile_limit().unwrap_or((1024, 1024));
    eprintln!(
        "loadgen: server binary {}, open-file limit {} (hard {}), CLK_TCK {}",
        server_bin.display(),
        limit.0,
        limit.1,
        clk_tck()
    );
    let ctx = Ctx {
        opts: opts.clone(),
        server_bin,
        fd_limit: limit.0,
    };
    let mut failures = 0;
    let mut summary: Vec<Value> = Vec::new();
    for scenario in &opts.scenarios {
        for mode in &opts.modes {
            let mut attempt = 0;
            let records = loop {
                attempt += 1;
                wait_for_quiet(opts.quiet_idle_pct, Duration::from_secs(300)).await;
                let outcome = match scenario.as_str() {
                    "fanout" => fanout(&ctx, mode).await,
                    "latency" => latency(&ctx, mode).await,
                    "idle" => idle(&ctx, mode).await,
                    "slow" => slow(&ctx, mode).await,
                    "churn" => churn(&ctx, mode).await,
                    "stuck" => stuck(&ctx, mode).await,
                    "flood" => flood(&ctx, mode).await,
                    "garbage-id" => garbage_id(&ctx, mode).await,
                    "backplane" => backplane(&ctx, mode).await,
                    "backplane-cost" => backplane_cost(&ctx, mode).await,
                    "backplane-rate" => backplane_rate(&ctx, mode).await,
                    other => Err(format!("unknown scenario {other}").into()),
                };
                let mut records = match outcome {
                    Ok(records) => records,
                    Err(e) => {
                        vec![json!({"scenario": scenario, "mode": mode, "error": e.to_string()})]
                    }
                };
                // Other work on a shared machine skews a run: measure again, a bounded
                // number of times, when it took more than the allowed share.
                let other = records
                    .iter()
                    .filter_map(|r| r["other_cpu_pct"].as_f64())
                    .fold(0.0, f64::max);
                for r in &mut records {
                    r["attempt"] = json!(attempt);
                }
                if other <= opts.max_other_cpu || attempt > opts.retries {
                    break records;
                }
                eprintln!(
                    "  other processes used {other:.0} % of a core during the run: measuring again"
                );
            };
            failures += records.iter().filter(|r| !r["error"].is_null()).count();
            for record in records {
                emit(&ctx.opts, &record)?;
                summary.push(record);
            }
        }
    }
    print_summary(&summary);
    Ok(failures)
}

struct Ctx {
    opts: Opts,
    server_bin: PathBuf,
    fd_limit: u64,
}

impl Ctx {
    fn check_fds(&self, n: usize) -> Result<()> {
        if n as u64 + 200 > self.fd_limit {
            return Err(format!(
                "{n} connections need {} open files; the limit is {} (run `ulimit -n $(ulimit -Hn)`)",
                n + 200,
                self.fd_limit
            )
            .into());
        }
        Ok(())
    }

    fn stall(&self) -> Duration {
        Duration::from_secs_f64(self.opts.stall_secs)
    }
}

fn emit(opts: &Opts, record: &Value) -> Result<()> {
    let line = record.to_string();
    println!("{line}");
    std::io::stdout().flush()?;
    if let Some(path) = &opts.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The server child and /proc

/// The `loadserver` binary next to this one (`target/release/`).
fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("current_exe has no parent directory")?;
    let path = dir.join(name);
    if !path.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p loadtest --bin {name}`",
            path.display()
        )
        .into());
    }
    Ok(path)
}

struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing its stdin asks the server to exit (so a profiler wrapping it can write its
        // report); it is killed if it has not after a few seconds.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn spawn(ctx: &Ctx, mode: &str, heartbeat_ms: u64, queue: usize) -> Result<Server> {
        Self::spawn_with(ctx, mode, heartbeat_ms, queue, &[]).await
    }

    /// As [`spawn`](Self::spawn), with more `loadserver` options.
    async fn spawn_with(
        ctx: &Ctx,
        mode: &str,
        heartbeat_ms: u64,
        queue: usize,
        extra: &[String],
    ) -> Result<Server> {
        // `MODE:hyper` serves an axum router with the bare hyper loop (`--serve hyper`).
        let (name, serve) = mode.split_once(':').unwrap_or((mode, "axum"));
        let mut child = Command::new(&ctx.server_bin)
            .args(["--mode", name, "--serve", serve])
            .args(["--addr", "127.0.0.1:0", "--workers", "2"])
            .args(["--heartbeat-ms", &heartbeat_ms.to_string()])
            .args(["--queue", &queue.to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let pid = child.id();
        // A profiler wrapping the server (`--server` may be a script) may print first.
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            for _ in 0..20 {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0
                    || line.starts_with("listening on ")
                {
                    break;
                }
            }
            // Keep reading (and dropping) what follows, so the server never blocks on a full
            // pipe.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            line
        })
        .await?;
        let mut server = Server {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("loadserver --mode {mode} did not start: {line:?}"))?;
        // Let the runtime's threads settle before the baseline is read.
        server.addr = addr;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(server)
    }

    fn sample(&self) -> Sample {
        Sample::of(self.pid)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    rss_kib: u64,
    cpu_ticks: u64,
    fds: u64,
    threads: u64,
    /// Busy time of the whole machine (all CPUs) from `/proc/stat`, in clock ticks.
    machine_busy_ticks: u64,
}

impl Sample {
    fn of(pid: u32) -> Sample {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Sample {
            at: Instant::now(),
            rss_kib: field("VmRSS:"),
            cpu_ticks: cpu_ticks(pid).unwrap_or(0),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
            threads: field("Threads:"),
            machine_busy_ticks: machine_busy_ticks().unwrap_or(0),
        }
    }

    /// The sum of several processes' counters (RSS, CPU, descriptors, threads).
    fn of_all(pids: &[u32]) -> Sample {
        let mut all = Sample {
            at: Instant::now(),
            rss_kib: 0,
            cpu_ticks: 0,
            fds: 0,
            threads: 0,
            machine_busy_ticks: machine_busy_ticks().unwrap_or(0),
        };
        for &pid in pids {
            let s = Sample::of(pid);
            all.rss_kib += s.rss_kib;
            all.cpu_ticks += s.cpu_ticks;
            all.fds += s.fds;
            all.threads += s.threads;
        }
        all.at = Instant::now();
        all
    }

    /// This sample with `other`'s CPU time added: processes of the run other than the
    /// server (a Redis), so they do not count as other work on the machine.
    fn with_cpu_of(mut self, other: &Sample) -> Sample {
        self.cpu_ticks += other.cpu_ticks;
        self
    }

    /// CPU used between two samples, in percent of one core.
    fn cpu_pct_since(&self, earlier: &Sample) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        let cpu = self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / clk_tck() as f64;
        if wall > 0.0 {
            100.0 * cpu / wall
        } else {
            0.0
        }
    }
}

/// Waits (up to `max`) until the machine was at least `idle_pct` % idle over one second, so a
/// scenario does not start while other work runs. Zero disables the wait.
async fn wait_for_quiet(idle_pct: f64, max: Duration) {
    if idle_pct <= 0.0 {
        return;
    }
    let deadline = Instant::now() + max;
    loop {
        let (b0, t0) = (machine_busy_ticks().unwrap_or(0), Instant::now());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = machine_busy_ticks().unwrap_or(0).saturating_sub(b0) as f64;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = t0.elapsed().as_secs_f64() * clk_tck() as f64 * cpus;
        let idle = 100.0 * (1.0 - busy / total.max(1.0));
        if idle >= idle_pct {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("  machine still busy ({idle:.0} % idle): running anyway");
            return;
        }
    }
}

/// CPU used between two samples by everything except the server and the load generator, in
/// percent of one core: other work on a shared machine that skews a run.
fn other_cpu_pct(server: (&Sample, &Sample), me: (&Sample, &Sample)) -> f64 {
    let wall = server.1.at.duration_since(server.0.at).as_secs_f64();
    let all = server
        .1
        .machine_busy_ticks
        .saturating_sub(server.0.machine_busy_ticks);
    let ours = server.1.cpu_ticks.saturating_sub(server.0.cpu_ticks)
        + me.1.cpu_ticks.saturating_sub(me.0.cpu_ticks);
    if wall > 0.0 {
        100.0 * all.saturating_sub(ours) as f64 / clk_tck() as f64 / wall
    } else {
        0.0
    }
}

/// user + nice + system + irq + softirq + steal of the `cpu` line of `/proc/stat`.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?)
}

/// utime + stime from `/proc/PID/stat`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 of stat(5) is fields[0]: utime (14) and stime (15) are fields[11] and [12].
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clk_tck() -> u64 {
    static TCK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The soft and hard `Max open files` from `/proc/self/limits`.
fn nofile_limit() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    Some((nums.next()?, nums.next()?))
}

/// Raises the soft open-file limit to the hard one. Without a libc binding (this crate
/// forbids `unsafe`), util-linux's `prlimit` does it from outside; `scripts/bench.sh` also runs
/// `ulimit -n` before starting us. Children inherit the raised limit.
fn raise_nofile_limit() {
    let Some((soft, hard)) = nofile_limit() else {
        return;
    };
    if soft >= hard {
        return;
    }
    let pid = std::process::id().to_string();
    let status = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .stderr(Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("loadgen: could not raise the open-file limit from {soft} to {hard}; use `ulimit -n {hard}`");
    }
}

// ---------------------------------------------------------------------------------------------
// Control requests (publish, stats) over one keep-alive connection

struct Control {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
}

impl Control {
    fn new(addr: SocketAddr) -> Control {
        Control { addr, sender: None }
    }

    async fn request(&mut self, method: Method, path: &str) -> Result<Bytes> {
        let mut last: Error = "no attempt".into();
        for _ in 0..3 {
            if self.sender.is_none() {
                let stream = TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                self.sender = Some(sender);
            }
            let Some(sender) = self.sender.as_mut() else {
                continue;
            };
            let req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(http::header::HOST, "loadserver")
                .body(Empty::new())?;
            let sent = match sender.ready().await {
                Ok(()) => sender.send_request(req).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(res) => {
                    let status = res.status();
                    let body = res.into_body().collect().await?.to_bytes();
                    if !status.is_success() {
                        return Err(format!("{method} {path}: {status}").into());
                    }
                    return Ok(body);
                }
                Err(e) => {
                    self.sender = None;
                    last = e.into();
                }
            }
        }
        Err(last)
    }

    async fn publish(&mut self, n: u64, bytes: usize, seq: u64) -> Result<()> {
        let path = format!("/publish?n={n}&bytes={bytes}&seq={seq}");
        self.request(Method::POST, &path).await.map(drop)
    }

    /// `(open, tasks)` from the server's `/stats`.
    async fn stats(&mut self) -> Result<(u64, u64)> {
        let body = self.request(Method::GET, "/stats").await?;
        let v: Value = serde_json::from_slice(&body)?;
        Ok((
            v["open"].as_u64().unwrap_or(0),
            v["tasks"].as_u64().unwrap_or(0),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The client side of one SSE connection

/// Decodes HTTP/1.1 chunked framing and the SSE lines inside it, keeping only what the load
/// test needs: each `data: SEQ TS ...` line (one per event) and each comment (heartbeat).
#[derive(Debug)]
struct SseReader {
    chunk: Chunk,
    size: u64,
    line: [u8; 64],
    len: usize,
}

impl Default for SseReader {
    fn default() -> Self {
        SseReader {
            chunk: Chunk::Size,
            size: 0,
            line: [0; 64],
            len: 0,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    #[default]
    Size,
    Extension,
    Data,
    DataEnd,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// An event's data line: its sequence number and publish timestamp (0 if unparsable).
    Event {
        seq: u64,
        ts: u64,
    },
    Comment,
}

impl SseReader {
    fn feed(&mut self, mut data: &[u8], on: &mut impl FnMut(Line)) {
        while let Some(&b) = data.first() {
            match self.chunk {
                Chunk::Size | Chunk::Extension => {
                    data = &data[1..];
                    match b {
                        b'\n' => {
                            self.chunk = if self.size == 0 {
                                Chunk::Done
                            } else {
                                Chunk::Data
                            };
                        }
                        _ if self.chunk == Chunk::Extension => {}
                        b'0'..=b'9' => self.size = self.size * 16 + u64::from(b - b'0'),
                        b'a'..=b'f' => self.size = self.size * 16 + u64::from(b - b'a' + 10),
                        b'A'..=b'F' => self.size = self.size * 16 + u64::from(b - b'A' + 10),
                        b';' => self.chunk = Chunk::Extension,
                        _ => {}
                    }
                }
                Chunk::Data => {
                    let k = (self.size as usize).min(data.len());
                    self.lines(&data[..k], on);
                    data = &data[k..];
                    self.size -= k as u64;
                    if self.size == 0 {
                        self.chunk = Chunk::DataEnd;
                    }
                }
                Chunk::DataEnd => {
                    data = &data[1..];
                    if b == b'\n' {
                        self.chunk = Chunk::Size;
                        self.size = 0;
                    }
                }
                Chunk::Done => return,
            }
        }
    }

    fn lines(&mut self, mut data: &[u8], on: &mut impl FnMut(Line)) {
        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
            self.push(&data[..pos]);
            self.finish_line(on);
            data = &data[pos + 1..];
        }
        self.push(data);
    }

    fn push(&mut self, part: &[u8]) {
        let k = (self.line.len() - self.len).min(part.len());
        self.line[self.len..self.len + k].copy_from_slice(&part[..k]);
        self.len += k;
    }

    fn finish_line(&mut self, on: &mut impl FnMut(Line)) {
        let line = &self.line[..self.len];
        if let Some(rest) = line.strip_prefix(b"data: ") {
            let mut fields = rest.split(|&b| b == b' ').map(parse_u64);
            let seq = fields.next().flatten().unwrap_or(u64::MAX);
            let ts = fields.next().flatten().unwrap_or(0);
            on(Line::Event { seq, ts });
        } else if line.first() == Some(&b':') {
            on(Line::Comment);
        }
        self.len = 0;
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Counters shared by every client of a run.
struct Shared {
    /// Events read by reading clients.
    delivered: AtomicU64,
    reads: AtomicU64,
    heartbeats: AtomicU64,
    /// Clients whose stream ended or failed after the headers.
    closed: AtomicU64,
    wake_at: AtomicU64,
    notify: Notify,
    /// Latency bookkeeping for sequence numbers `base..base + len`.
    base: AtomicU64,
    /// Only every `stride`-th event is timed (from the base), to keep the load generator's
    /// own cost down when events arrive by the million.
    stride: AtomicU64,
    max_latency: Vec<AtomicU64>,
    receivers: Vec<AtomicU32>,
}

const LATENCY_SLOTS: usize = 1 << 18;

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            delivered: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
            base: AtomicU64::new(u64::MAX),
            stride: AtomicU64::new(1),
            max_latency: (0..LATENCY_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            receivers: (0..LATENCY_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Starts latency bookkeeping at `base` (sequence numbers below it are ignored).
    fn reset_latency(&self, base: u64, stride: u64) {
        self.base.store(u64::MAX, Ordering::SeqCst);
        self.stride.store(stride.max(1), Ordering::SeqCst);
        for (l, r) in self.max_latency.iter().zip(&self.receivers) {
            l.store(0, Ordering::Relaxed);
            r.store(0, Ordering::Relaxed);
        }
        self.base.store(base, Ordering::SeqCst);
    }

    /// Accounts for what one read returned.
    fn on_read(&self, reader: &mut SseReader, data: &[u8]) {
        let now = unix_nanos();
        let base = self.base.load(Ordering::Relaxed);
        let stride = self.stride.load(Ordering::Relaxed);
        let (mut events, mut comments) = (0u64, 0u64);
        reader.feed(data, &mut |line| match line {
            Line::Event { seq, ts } => {
                events += 1;
                let Some(i) = seq.checked_sub(base).map(|i| i as usize) else {
                    return;
                };
                if i < LATENCY_SLOTS && ts > 0 && i as u64 % stride == 0 {
                    let lat = now.saturating_sub(ts);
                    let slot = &self.max_latency[i];
                    if lat > slot.load(Ordering::Relaxed) {
                        slot.fetch_max(lat, Ordering::Relaxed);
                    }
                    self.receivers[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            Line::Comment => comments += 1,
        });
        self.reads.fetch_add(1, Ordering::Relaxed);
        if comments > 0 {
            self.heartbeats.fetch_add(comments, Ordering::Relaxed);
        }
        if events > 0 {
            let before = self.delivered.fetch_add(events, Ordering::SeqCst);
            let wake = self.wake_at.load(Ordering::SeqCst);
            if before < wake && before + events >= wake {
                self.notify.notify_one();
            }
        }
    }

    /// Waits until `target` events were delivered; `false` if `stall` passed first.
    async fn wait_delivered(&self, target: u64, stall: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + stall;
        loop {
            if self.delivered.load(Ordering::SeqCst) >= target {
                return true;
            }
            self.wake_at.store(target, Ordering::SeqCst);
            if self.delivered.load(Ordering::SeqCst) >= target {
                return true;
            }
            if tokio::time::timeout_at(deadline, self.notify.notified())
                .await
                .is_err()
            {
                return self.delivered.load(Ordering::SeqCst) >= target;
            }
        }
    }

    /// Per-event latency over `count` events from the base: the time until the last of
    /// `expected` clients read each one.
    fn latency(&self, count: u64, expected: u64) -> Latency {
        let mut complete = Vec::new();
        let mut incomplete = 0;
        let stride = self.stride.load(Ordering::Relaxed).max(1) as usize;
        for i in (0..(count as usize).min(LATENCY_SLOTS)).step_by(stride) {
            if u64::from(self.receivers[i].load(Ordering::Relaxed)) >= expected {
                complete.push(self.max_latency[i].load(Ordering::Relaxed));
            } else {
                incomplete += 1;
            }
        }
        complete.sort_unstable();
        let pct = |q: f64| -> f64 {
            if complete.is_empty() {
                return f64::NAN;
            }
            let rank = ((q * complete.len() as f64).ceil() as usize).clamp(1, complete.len());
            complete[rank - 1] as f64 / 1e6
        };
        Latency {
            events: complete.len() as u64,
            incomplete,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Latency {
    events: u64,
    incomplete: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn json(&self) -> Value {
        json!({
            "events": self.events,
            "incomplete_events": self.incomplete,
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "max_ms": round3(self.max_ms),
        })
    }
}

fn round3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// Source addresses rotate over `127.0.0.2..=127.0.0.251`: each has its own ephemeral ports.
fn next_source_ip() -> IpAddr {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let i = NEXT.fetch_add(1, Ordering::Relaxed) % 250;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))
}

/// What a client sends, beyond `GET /events`.
#[derive(Debug, Clone, Default)]
struct ClientSpec {
    /// A `Last-Event-ID` header.
    last_event_id: Option<String>,
    /// `SO_RCVBUF` for the client's socket (a small one makes a non-reader stuck sooner).
    recv_buffer: Option<u32>,
    /// `GET /events?hello=1`: the server sends one event at once.
    hello: bool,
}

/// Connects, sends `GET path`, reads the response head. Returns the stream and the body bytes
/// read past the head.
async fn open_stream(addr: SocketAddr, path: &str) -> Result<(TcpStream, Vec<u8>)> {
    open_stream_with(addr, path, &ClientSpec::default()).await
}

async fn open_stream_with(
    addr: SocketAddr,
    path: &str,
    spec: &ClientSpec,
) -> Result<(TcpStream, Vec<u8>)> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    if let Some(size) = spec.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(SocketAddr::new(next_source_ip(), 0))?;
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let last_event_id = match &spec.last_event_id {
        Some(id) => format!("Last-Event-ID: {id}\r\n"),
        None => String::new(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{last_event_id}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err("connection closed before the response head".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            if !text.starts_with("http/1.1 200") {
                let status = text.lines().next().unwrap_or_default().to_owned();
                return Err(format!("unexpected response: {status}").into());
            }
            if !text.contains("transfer-encoding: chunked") {
                return Err("response is not chunked".into());
            }
            return Ok((stream, head.split_off(end + 4)));
        }
        if head.len() > 16 * 1024 {
            return Err("response head too long".into());
        }
    }
}

/// Reads events until the stream ends.
async fn read_events(mut stream: TcpStream, leftover: Vec<u8>, shared: Arc<Shared>) {
    let mut reader = SseReader::default();
    if !leftover.is_empty() {
        shared.on_read(&mut reader, &leftover);
    }
    let mut buf = vec![0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => shared.on_read(&mut reader, &buf[..n]),
        }
    }
    shared.closed.fetch_add(1, Ordering::Relaxed);
}

/// N open connections, each a task. Dropping it closes them all.
struct Clients {
    tasks: Vec<JoinHandle<()>>,
    connected: usize,
    failed: usize,
    first_error: Option<String>,
    connect_secs: f64,
}

impl Clients {
    async fn close(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Opens `n` connections with at most `concurrency` connects in flight; clients for which
/// `is_slow(i)` never read after the response head. Returns once every one has its response
/// head or has failed.
async fn connect_all(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    is_slow: impl Fn(usize) -> bool,
    shared: &Arc<Shared>,
) -> Clients {
    connect_all_with(addr, n, concurrency, is_slow, shared, |_| {
        ClientSpec::default()
    })
    .await
}

/// As [`connect_all`], with `spec(i)` for the `i`-th client's request and socket.
async fn connect_all_with(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    is_slow: impl Fn(usize) -> bool,
    shared: &Arc<Shared>,
    spec: impl Fn(usize) -> ClientSpec,
) -> Clients {
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(concurrency));
    let done = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0), Notify::new()));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let slow = is_slow(i);
        let spec = spec(i);
        let (sem, done, shared, first_error) = (
            sem.clone(),
            done.clone(),
            shared.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let opened = {
                let Ok(_permit) = sem.acquire_owned().await else {
                    return;
                };
                let mut attempt = 0;
                loop {
                    let path = if spec.hello {
                        "/events?hello=1"
                    } else {
                        "/events"
                    };
                    let open = open_stream_with(addr, path, &spec);
                    let r = tokio::time::timeout(Duration::from_secs(20), open)
                        .await
                        .unwrap_or_else(|_| Err("connect timed out".into()));
                    attempt += 1;
                    if r.is_ok() || attempt == 3 {
                        break r;
                    }
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
            };
            match opened {
                Ok((stream, leftover)) => {
                    done.0.fetch_add(1, Ordering::SeqCst);
                    done.2.notify_one();
                    if slow {
                        // Keep the socket open and never read again.
                        let _keep = stream;
                        std::future::pending::<()>().await;
                    } else {
                        read_events(stream, leftover, shared).await;
                    }
                }
                Err(e) => {
                    if let Ok(mut first) = first_error.lock() {
                        first.get_or_insert_with(|| e.to_string());
                    }
                    done.1.fetch_add(1, Ordering::SeqCst);
                    done.2.notify_one();
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while done.0.load(Ordering::SeqCst) + done.1.load(Ordering::SeqCst) < n {
        if tokio::time::timeout_at(deadline, done.2.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    let first_error = first_error.lock().ok().and_then(|e| e.clone());
    Clients {
        tasks,
        connected: done.0.load(Ordering::SeqCst),
        failed: done.1.load(Ordering::SeqCst),
        first_error,
        connect_secs: start.elapsed().as_secs_f64(),
    }
}

/// A fresh server, its baseline, and N connected clients with the memory they cost.
struct Setup {
    server: Server,
    control: Control,
    shared: Arc<Shared>,
    clients: Clients,
    base: Sample,
    connected: Sample,
    open_reported: u64,
}

impl Setup {
    async fn new(
        ctx: &Ctx,
        mode: &str,
        n: usize,
        queue: usize,
        is_slow: impl Fn(usize) -> bool,
    ) -> Result<Setup> {
        ctx.check_fds(n)?;
        let server = Server::spawn(ctx, mode, ctx.opts.heartbeat_ms, queue).await?;
        let mut control = Control::new(server.addr);
        control.stats().await?;
        let base = server.sample();
        let shared = Shared::new();
        let clients = connect_all(
            server.addr,
            n,
            ctx.opts.connect_concurrency,
            is_slow,
            &shared,
        )
        .await;
        if clients.connected < n {
            return Err(format!(
                "{} of {n} connections failed ({})",
                n - clients.connected,
                clients.first_error.as_deref().unwrap_or("timed out")
            )
            .into());
        }
        // Let connection setup finish on the server side before reading its memory.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connected = server.sample();
        let (open_reported, _) = control.stats().await?;
        eprintln!(
            "  {mode}: {n} connected in {:.1} s; server RSS {} -> {} KiB",
            clients.connect_secs, base.rss_kib, connected.rss_kib
        );
        Ok(Setup {
            server,
            control,
            shared,
            clients,
            base,
            connected,
            open_reported,
        })
    }

    fn memory_json(&self) -> Value {
        let n = self.clients.connected.max(1) as f64;
        let delta = self.connected.rss_kib as f64 - self.base.rss_kib as f64;
        json!({
            "clients": self.clients.connected,
            "connect_s": round3(self.clients.connect_secs),
            "connect_failed": self.clients.failed,
            "open_reported": self.open_reported,
            "rss_base_kib": self.base.rss_kib,
            "rss_connected_kib": self.connected.rss_kib,
            "rss_per_conn_bytes": (delta * 1024.0 / n).round(),
            "server_fds": self.connected.fds,
            "server_threads": self.connected.threads,
        })
    }

    async fn finish(self) {
        self.clients.close().await;
        drop(self.server);
    }
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

// ---------------------------------------------------------------------------------------------
// Closed-loop fan-out

struct LoopSpec {
    per_publish: u64,
    window: u64,
    bytes: usize,
    duration: Duration,
    /// Stop publishing after this many events, if sooner than `duration`.
    max_events: u64,
    /// Clients that read.
    readers: u64,
}

/// What a closed loop drives: the clients' counters, the connection it publishes through, the
/// server processes, and processes of the run besides them (a Redis), whose CPU is reported
/// on its own and not counted as other work.
struct Target<'a> {
    shared: Arc<Shared>,
    control: &'a mut Control,
    servers: Vec<u32>,
    helpers: Vec<u32>,
}

impl Setup {
    fn target(&mut self) -> Target<'_> {
        Target {
            shared: self.shared.clone(),
            control: &mut self.control,
            servers: vec![self.server.pid],
            helpers: Vec::new(),
        }
    }
}

/// Publishes `per_publish` events per call as fast as the readers keep up, with at most
/// `window` events outstanding (on average over readers), for `duration`; then waits until
/// everything is delivered.
async fn closed_loop(target: Target<'_>, spec: &LoopSpec, seq: &mut u64, stall: Duration) -> Value {
    let Target {
        shared,
        control,
        servers,
        helpers,
    } = target;
    // Time every event of a one-event-per-write run; one in 16 otherwise.
    let stride = if spec.per_publish == 1 && spec.window == 1 {
        1
    } else {
        16
    };
    shared.reset_latency(*seq, stride);
    let d0 = shared.delivered.load(Ordering::SeqCst);
    let r0 = shared.reads.load(Ordering::Relaxed);
    let cpu0 = Sample::of_all(&servers);
    let helpers0 = Sample::of_all(&helpers);
    let me0 = Sample::of(std::process::id());
    let start = Instant::now();
    let mut published = 0u64;
    let mut publish_calls = 0u64;
    let mut error = None::<String>;
    let mut rss_max = cpu0.rss_kib;
    let mut last_sample = Instant::now();
    while start.elapsed() < spec.duration && published < spec.max_events {
        let need = d0 + (published + spec.per_publish).saturating_sub(spec.window) * spec.readers;
        if !shared.wait_delivered(need, stall).await {
            error = Some(format!(
                "stalled: {} of {} deliveries after {published} events",
                shared.delivered.load(Ordering::SeqCst) - d0,
                published * spec.readers
            ));
            break;
        }
        if let Err(e) = control.publish(spec.per_publish, spec.bytes, *seq).await {
            error = Some(format!("publish: {e}"));
            break;
        }
        *seq += spec.per_publish;
        published += spec.per_publish;
        publish_calls += 1;
        if last_sample.elapsed() > Duration::from_millis(250) {
            rss_max = rss_max.max(Sample::of_all(&servers).rss_kib);
            last_sample = Instant::now();
        }
    }
    if error.is_none()
        && !shared
            .wait_delivered(d0 + published * spec.readers, stall)
            .await
    {
        error = Some("stalled while draining".into());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = Sample::of_all(&servers);
    let helpers1 = Sample::of_all(&helpers);
    let me1 = Sample::of(std::process::id());
    let ours0 = cpu0.with_cpu_of(&helpers0);
    let ours1 = cpu1.with_cpu_of(&helpers1);
    let deliveries = shared.delivered.load(Ordering::SeqCst) - d0;
    let reads = shared.reads.load(Ordering::Relaxed) - r0;
    let latency = shared.latency(published, spec.readers);
    json!({
        "latency_stride": stride,
        "events_per_publish": spec.per_publish,
        "window_events": spec.window,
        "bytes": spec.bytes,
        "readers": spec.readers,
        "duration_s": round3(elapsed),
        "events_published": published,
        "publish_calls": publish_calls,
        "deliveries": deliveries,
        "deliveries_per_s": (deliveries as f64 / elapsed).round(),
        "events_per_read": round3(deliveries as f64 / reads.max(1) as f64),
        "latency": latency.json(),
        "server_cpu_pct": round3(cpu1.cpu_pct_since(&cpu0)),
        "loadgen_cpu_pct": round3(me1.cpu_pct_since(&me0)),
        "helper_cpu_pct": round3(helpers1.cpu_pct_since(&helpers0)),
        "other_cpu_pct": round3(other_cpu_pct((&ours0, &ours1), (&me0, &me1))),
        "rss_max_kib": rss_max.max(cpu1.rss_kib),
        "rss_end_kib": cpu1.rss_kib,
        "error": error,
    })
}

async fn fanout(ctx: &Ctx, mode: &str) -> Result<Vec<Value>> {
    let o = &ctx.opts;
    eprintln!("fanout: {mode}, {} clients", o.clients);
    let mut setup = Setup::new(ctx, mode, o.clients, o.fanout_queue, |_| false).await?;
    let memory = setup.memory_json();
    let mut seq = 1;
    let mut records = Vec::new();
    for (variant, per_publish, window) in [
        ("single", 1, o.single_window),
        ("pipelined", 1, o.pipeline_window),
        ("coalesced", o.burst, o.burst_window),
    ] {
        if !o.variants.iter().any(|v| v == variant) {
            continue;
        }
        let spec = LoopSpec {
            per_publish,
            window,
            bytes: o.bytes,
            duration: Duration::from_secs_f64(o.fanout_secs),
            max_events: u64::MAX,
            readers: o.clients as u64,
        };
        let result = closed_loop(setup.target(), &spec, &mut seq, ctx.stall()).await;
        eprintln!(
            "  {variant}: {} deliveries/s, {} events/read, p99 {} ms, server CPU {} %",
            result["deliveries_per_s"],
            result["events_per_read"],
            result["latency"]["p99_ms"],
            result["server_cpu_pct"]
        );
        let record = json!({"scenario": "fanout", "variant": variant, "mode": mode});
        records.push(merge(merge(record, memory.clone()), result));
    }
    setup.finish().await;
    Ok(records)
}

// ---------------------------------------------------------------------------------------------
// Latency at one publish per second

async fn latency(ctx: &Ctx, mode: &str) -> Result<Vec<Value>> {
    let o = &ctx.opts;
    eprintln!(
        "latency: {mode}, {} clients, {} s",
        o.latency_clients, o.latency_secs
    );
    let mut setup = Setup::new(ctx, mode, o.latency_clients, o.queue, |_| false).await?;
    let shared = setup.shared.clone();
    let seq0 = 1;
    shared.reset_latency(seq0, 1);
    let d0 = shared.delivered.load(Ordering::SeqCst);
    let cpu0 = setup.server.sample();
    let me0 = Sample::of(std::process::id());
    let start = tokio::time::Instant::now();
    let mut error = None;
    for i in 0..o.latency_secs {
        tokio::time::sleep_until(start + Duration::from_secs(i)).await;
        if let Err(e) = setup.control.publish(1, o.bytes, seq0 + i).await {
            error = Some(format!("publish: {e}"));
            break;
        }
    }
    let readers = o.latency_clients as u64;
    if !shared
        .wait_delivered(d0 + o.latency_secs * readers, ctx.stall())
        .await
    {
        error.get_or_insert_with(|| "not every event reached every client".into());
    }
    let cpu1 = setup.server.sample();
    let me1 = Sample::of(std::process::id());
    let lat = shared.latency(o.latency_secs, readers);
    eprintln!(
        "  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} events",
        lat.p50_ms, lat.p99_ms, lat.max_ms, lat.events
    );
    let record = json!({
        "scenario": "latency",
        "mode": mode,
        "bytes": o.bytes,
        "publishes_per_s": 1,
        "latency": lat.json(),
        "server_cpu_pct": round3(cpu1.cpu_pct_since(&cpu0)),
        "other_cpu_pct": round3(other_cpu_pct((&cpu0, &cpu1), (&me0, &me1))),
        "error": error,
    });
    let record = merge(record, setup.memory_json());
    setup.finish().await;
    Ok(vec![record])
}

// ---------------------------------------------------------------------------------------------
// Idle: heartbeats only

async fn idle(ctx: &Ctx, mode: &str) -> Result<Vec<Value>> {
    let o = &ctx.opts;
    eprintln!(
        "idle: {mode}, {} clients, heartbeat {} ms, window {} s",
        o.idle_clients, o.heartbeat_ms, o.idle_secs
    );
    let mut setup = Setup::new(ctx, mode, o.idle_clients, o.queue, |_| false).await?;
    let shared = setup.shared.clone();
    let h0 = shared.heartbeats.load(Ordering::Relaxed);
    let s0 = setup.server.sample();
    let me0 = Sample::of(std::process::id());
    tokio::time::sleep(Duration::from_secs_f64(o.idle_secs)).await;
    let s1 = setup.server.sample();
    let me1 = Sample::of(std::process::id());
    let heartbeats = shared.heartbeats.load(Ordering::Relaxed) - h0;
    let (open, tasks) = setup.control.stats().await?;
    let window = s1.at.duration_since(s0.at).as_secs_f64();
    let record = json!({
        "scenario": "idle",
        "mode": mode,
        "heartbeat_ms": o.heartbeat_ms,
        "window_s": round3(window),
        "server_cpu_pct": round3(s1.cpu_pct_since(&s0)),
        "server_cpu_ticks": s1.cpu_ticks - s0.cpu_ticks,
        "loadgen_cpu_pct": round3(me1.cpu_pct_since(&me0)),
        "other_cpu_pct": round3(other_cpu_pct((&s0, &s1), (&me0, &me1))),
        "heartbeats_received": heartbeats,
        "heartbeats_per_s": round3(heartbeats as f64 / window),
        "closed_clients": shared.closed.load(Ordering::Relaxed),
        "open_end": open,
        "tasks_end": tasks,
        "rss_end_kib": s1.rss_kib,
    });
    let record = merge(record, setup.memory_json());
    eprintln!(
        "  server CPU {} % of a core, {} heartbeats, {} B per connection",
        record["server_cpu_pct"], heartbeats, record["rss_per_conn_bytes"]
    );
    setup.finish().await;
    Ok(vec![record])
}

// ---------------------------------------------------------------------------------------------
// Slow clients

async fn slow(ctx: &Ctx, mode: &str) -> Result<Vec<Value>> {
    let o = &ctx.opts;
    let n = o.slow_clients;
    let mut records = Vec::new();
    // Single runs of this closed loop vary by about 15 % on a shared VM: alternate the two
    // configurations over several repetitions and compare medians.
    let runs = (0..o.slow_reps).flat_map(|rep| {
        let pair = [0.0, o.slow_pct];
        let pair = if rep % 2 == 0 {
            pair
        } else {
            [pair[1], pair[0]]
        };
        pair.map(|pct| (rep, pct))
    });
    for (rep, pct) in runs {
        // Every k-th client is slow, spread over the connection order.
        let every = if pct > 0.0 {
            (100.0 / pct).round().max(1.0) as usize
        } else {
            usize::MAX
        };
        let is_slow = move |i: usize| every != usize::MAX && i % every == every / 2;
        let slow_count = (0..n).filter(|&i| is_slow(i)).count();
        eprintln!("slow: {mode}, {n} clients, {slow_count} never read");
        let mut setup = Setup::new(ctx, mode, n, o.queue, is_slow).await?;
        let readers = (n - slow_count) as u64;
        let mut seq = 1;
        // Sample RSS over time, from the start of the prefill to the end of the measurement.
        let samples = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (samples, stop, pid) = (samples.clone(), stop.clone(), setup.server.pid);
            tokio::spawn(async move {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let s = Sample::of(pid);
                    if let Ok(mut v) = samples.lock() {
                        v.push((t0.elapsed().as_secs_f64(), s.rss_kib));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        // Prefill, the same with and without slow clients: a stalled client only holds the
        // server up once the kernel's buffers for it are full (about 4 MiB of send buffer on
        // loopback), so large events fill those first, then small ones fill the server's own
        // per-connection queue. After this, slow clients are stuck (or were disconnected).
        let prefill = Instant::now();
        let mut prefill_errors = Vec::new();
        for (bytes, per_publish, window, events) in [
            (o.slow_prefill_bytes, 1, 4, o.slow_prefill_events),
            (o.slow_bytes, 16, 64, 2 * o.queue as u64 + 64),
        ] {
            let spec = LoopSpec {
                per_publish,
                window,
                bytes,
                duration: Duration::from_secs(60),
                max_events: events,
                readers,
            };
            let r = closed_loop(setup.target(), &spec, &mut seq, ctx.stall()).await;
            if let Some(e) = r["error"].as_str() {
                prefill_errors.push(format!("prefill: {e}"));
            }
        }
        let prefill_s = prefill.elapsed().as_secs_f64();
        let (open_after_prefill, _) = setup.control.stats().await.unwrap_or((0, 0));
        let spec = LoopSpec {
            per_publish: 1,
            window: o.single_window,
            bytes: o.slow_bytes,
            duration: Duration::from_secs_f64(o.slow_secs),
            max_events: u64::MAX,
            readers,
        };
        let mut result = closed_loop(setup.target(), &spec, &mut seq, ctx.stall()).await;
        if result["error"].is_null() && !prefill_errors.is_empty() {
            result["error"] = json!(prefill_errors.join("; "));
        }
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.await;
        let (open, _) = setup.control.stats().await.unwrap_or((0, 0));
        let rss_series: Vec<Value> = samples
            .lock()
            .map(|v| v.iter().map(|&(t, kib)| json!([round3(t), kib])).collect())
            .unwrap_or_default();
        eprintln!(
            "  {pct} % slow: {} deliveries/s to readers, p99 {} ms, RSS max {} KiB, open at end {open}",
            result["deliveries_per_s"], result["latency"]["p99_ms"], result["rss_max_kib"]
        );
        let record = json!({
            "scenario": "slow",
            "mode": mode,
            "slow_pct": pct,
            "rep": rep,
            "slow_clients": slow_count,
            "prefill_s": round3(prefill_s),
            "prefill": format!(
                "{} events of {} B, then {} of {} B",
                o.slow_prefill_events,
                o.slow_prefill_bytes,
                2 * o.queue + 64,
                o.slow_bytes
            ),
            "open_after_prefill": open_after_prefill,
            "open_end": open,
            "rss_series": rss_series,
        });
        records.push(merge(merge(record, setup.memory_json()), result));
        setup.finish().await;
    }
    Ok(records)
}

// ---------------------------------------------------------------------------------------------
// Churn

/// Connect, read one event, close, until `until`. Returns cycle times in microseconds.
async fn churn_worker(addr: SocketAddr, until: Instant, errors: Arc<AtomicU64>) -> Vec<u32> {
    let mut times = Vec::new();
    let mut buf = vec![0u8; 4096];
    while Instant::now() < until {
        let t = Instant::now();
        let cycle = async {
            let (mut stream, leftover) = open_stream(addr, "/events?hello=1").await?;
            let mut reader = SseReader::default();
            let mut got = false;
            reader.feed(&leftover, &mut |line| {
                got |= matches!(line, Line::Event { .. });
            });
            while !got {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Err::<(), Error>("closed before the first event".into());
                }
                reader.feed(&buf[..n], &mut |line| {
                    got |= matches!(line, Line::Event { .. });
                });
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(10), cycle).await {
            Ok(Ok(())) => times.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    times
}

async fn churn_run(addr: SocketAddr, secs: f64, concurrency: usize) -> (Vec<u32>, u64, f64) {
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(churn_worker(addr, until, errors.clone())))
        .collect();
    let mut times = Vec::new();
    for w in workers {
        if let Ok(t) = w.await {
            times.extend(t);
        }
    }
    (
        times,
        errors.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    )
}

async fn churn(ctx: &Ctx, mode: &str) -> Result<Vec<Value>> {
    let o = &ctx.opts;
    eprintln!(
        "churn: {mode}, {} s, {} in flight",
        o.churn_secs, o.churn_concurrency
    );
    ctx.check_fds(o.churn_concurrency)?;
    let server = Server::spawn(ctx, mode, o.heartbeat_ms, o.queue).await?;
    let mut control = Control::new(server.addr);
    let (open_idle, tasks_idle) = control.stats().await?;
    let cold = server.sample();
    // Warm-up: the allocator and the runtime reach their working size.
    let _ = churn_run(server.addr, 1.0, o.churn_concurrency).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (open0, tasks0) = control.stats().await?;
    let s0 = server.sample();
    let me0 = Sample::of(std::process::id());
    let (mut times, errors, elapsed) =
        churn_run(server.addr, o.churn_secs, o.churn_concurrency).await;
    let s_run = server.sample();
    let me_run = Sample::of(std::process::id());
    // Connections close asynchronously: give them a bounded time to go.
    let settle_start = Instant::now();
    let (mut open1, mut tasks1) = control.stats().await?;
    while (open1 > open0 || tasks1 > tasks0) && settle_start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (open1, tasks1) = control.stats().await?;
    }
    let settle_s = settle_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s1 = server.sample();
    // More rounds tell a leak (RSS keeps climbing) from the allocator keeping its high-water
    // mark (RSS steps up once, then stays).
    let mut rss_rounds = vec![s0.rss_kib, s1.rss_kib];
    let mut open_rounds = vec![open0, open1];
    for _ in 0..o.churn_extra_rounds {
        let _ = churn_run(server.addr, o.churn_secs / 2.0, o.churn_concurrency).await;
        let settle = Instant::now();
        let mut open = control.stats().await?.0;
        while open > open0 && settle.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            open = control.stats().await?.0;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_rounds.push(server.sample().rss_kib);
        open_rounds.push(open);
    }
    times.sort_unstable();
    let pct = |q: f64| -> Value {
        if times.is_empty() {
            return Value::Null;
        }
        let rank = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len());
        round3(f64::from(times[rank - 1]) / 1000.0)
    };
    let cycles = times.len() as u64;
    let mut server = server;
    let record = json!({
        "scenario": "churn",
        "mode": mode,
        "concurrency": o.churn_concurrency,
        "duration_s": round3(elapsed),
        "cycles": cycles,
        "cycles_per_s": (cycles as f64 / elapsed).round(),
        "errors": errors,
        "cycle_p50_ms": pct(0.5),
        "cycle_p99_ms": pct(0.99),
        "server_cpu_pct": round3(s_run.cpu_pct_since(&s0)),
        "loadgen_cpu_pct": round3(me_run.cpu_pct_since(&me0)),
        "other_cpu_pct": round3(other_cpu_pct((&s0, &s_run), (&me0, &me_run))),
        "open_cold": open_idle,
        "tasks_cold": tasks_idle,
        "open_start": open0,
        "open_end": open1,
        "tasks_start": tasks0,
        "tasks_end": tasks1,
        "settle_s": round3(settle_s),
        "fds_start": s0.fds,
        "fds_end": s1.fds,
        "rss_cold_kib": cold.rss_kib,
        "rss_start_kib": s0.rss_kib,
        "rss_after_run_kib": s_run.rss_kib,
        "rss_end_kib": s1.rss_kib,
        "rss_rounds_kib": rss_rounds,
        "open_rounds": open_rounds,
        "server_alive": server.alive(),
    });
    eprintln!(
        "  {} cycles/s ({errors} errors); open {open0} -> {open1}, tasks {tasks0} -> {tasks1}, \
         fds {} -> {}, RSS {} -> {} KiB",
        record["cycles_per_s"], s0.fds, s1.fds, s0.rss_kib, s1.rss_kib
    );
    Ok(vec![record])
}

// ---------------------------------------------------------------------------------------------
// Stuck clients, the flood, garbage ids (issue 12)

/// The server's TCP connections in state ESTABLISHED (local port = the server's), from
/// `/proc/net/tcp`: the clients' ends have other local ports, so they are not counted.
fn server_established(addr: SocketAddr) -> u64 {
    let port = format!(":{:04X}", addr.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1).unwrap_or("");
            let state = fields.nth(1).unwrap_or("");
            local.ends_with(&port) && state == "01"
        })
        .count() as u64
}

/// Samples the server every `every` until `stop` is set: `[t_s, rss_kib, fds, established]`.
fn sample_series(
    pid: u32,
    addr: SocketAddr,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<[f64; 4]>> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        let mut series = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let s = Sample::of(pid);
            series.push([
                (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
                s.rss_kib as f64,
                s.fds as f64,
                server_established(addr) as f64,
            ]);
            tokio::time::sleep(every).await;
        }
        series
    })
}

async fn stuck(ctx: &Ctx, mode: &str) -> Result<Vec<Value>> {
    let o = &ctx.opts;
    let n = o.stuck_clients;
    ctx.check_fds(n)?;
    let mut records = Vec::new();
    for stall_ms in [o.stuck_stall_ms, 0] {
        let guard = if stall_ms > 0 {
            format!("GuardedListener, stall timeout {stall_ms} ms")
        } else {
            "no guard".to_owned()
        };
        eprintln!("stuck: {mode}, {n} clients that never read, {guard}");
        let extra = ["--stall-ms".to_owned(), stall_ms.to_string()];
        let server = Server::spawn_with(ctx, mode, o.heartbeat_ms, o.queue, &extra).await?;
        let mut control = Control::new(server.addr);
        control.stats().await?;
        let base = server.sample();
        let shared = Shared::new();
        let clients = connect_all_with(
            server.addr,
            n,
            o.connect_concurrency,
            |_| true,
            &shared,
            |_| ClientSpec {
                recv_buffer: Some(4 * 1024),
                ..ClientSpec::default()
            },
        )
        .await;
        if clients.connected < n {
            return Err(format!(
                "{} of {n} connections failed ({})",
                n - clients.connected,
                clients.first_error.as_deref().unwrap_or("timed out")
            )
            .into());
        }
        let connected = server.sample();
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample_series(
            server.pid,
            server.addr,
            Duration::from_millis(250),
            stop.clone(),
        );
        // Make every client stuck: big events fill the kernel's buffers, then more small
        // events than the manager's queue holds make it close them as slow consumers. Paced,
        // as live traffic is, so that each stage fills before the next: the kernel's buffers,
        // then hyper's write buffer, then the manager's queue (a burst would overflow the
        // queue first, and hyper would finish the response into the kernel's buffers).
        let t0 = Instant::now();
        let mut seq = 1;
        let small = 2 * o.queue as u64 + 64;
        for (events, per_publish, bytes) in [
            (o.stuck_prefill_events, 1u64, 65_536usize),
            (small, 16, 1024),
        ] {
            let mut sent = 0;
            while sent < events {
                let k = per_publish.min(events - sent);
                control.publish(k, bytes, seq).await?;
                seq += k;
                sent += k;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let prefill_s = t0.elapsed().as_secs_f64();
        let (open_after_prefill, _) = control.stats().await?;
        let mut gone_s = None;
        while t0.elapsed().as_secs_f64() < o.stuck_secs {
            if gone_s.is_none() && server_established(server.addr) <= 1 {
                // At most the control connection is left.
                gone_s = Some(t0.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let series = sampler.await.unwrap_or_default();
        let end = server.sample();
        let (open_end, tasks_end) = control.stats().await?;
        let rss_max = series.iter().map(|s| s[1] as u64).max().unwrap_or(0);
        let record = json!({
            "scenario": "stuck",
            "mode": mode,
            "stall_ms": stall_ms,
            "clients": n,
            "prefill_s": round3(prefill_s),
            "open_after_prefill": open_after_prefill,
            "open_end": open_end,
            "tasks_end": tasks_end,
            "sockets_gone_s": gone_s.map(round3),
            "established_end": server_established(server.addr),
            "rss_base_kib": base.rss_kib,
            "rss_connected_kib": connected.rss_kib,
            "rss_max_kib": rss_max,
            "rss_end_kib": end.rss_kib,
            "fds_base": base.fds,
            "fds_connected": connected.fds,
            "fds_end": end.fds,
            "series_t_rss_fds_established": series,
        });
        eprintln!(
            "  sockets gone after {} s; RSS {} -> max {} -> {} KiB; fds {} -> {} -> {}; manager open {} -> {}",
            record["sockets_gone_s"],
            base.rss_kib,
            rss_max,
            end.rss_kib,
            base.fds,
            connected.fds,
            end.fds,
            open_after_prefill,
            open_end
        );
        records.push(record);
        clients.close().await;
        drop(server);
    }
    Ok(records)
}

async fn flood(ctx: &Ctx, mode: &str) -> Result<Vec<Value>> {
    let o = &ctx.opts;
    let n = o.flood_clients;
    ctx.check_fds(n)?;
    eprintln!(
        "flood: {mode}, {n} connections opened then closed, {} round(s), RSS for {} s after",
        o.flood_rounds, o.flood_idle_secs
    );
    let server = Server::spawn(ctx, mode, o.heartbeat_ms, o.queue).await?;
    let mut control = Control::new(server.addr);
    let allocator = {
        let body = control.request(Method::GET, "/stats").await?;
        let v: Value = serde_json::from_slice(&body)?;
        v["allocator"].as_str().unwrap_or("?").to_owned()
    };
    let pre = server.sample();
    let mut rounds = Vec::new();
    for round in 0..o.flood_rounds {
        let shared = Shared::new();
        let clients = connect_all(server.addr, n, o.connect_concurrency, |_| false, &shared).await;
        if clients.connected < n {
            return Err(format!(
                "{} of {n} connections failed ({})",
                n - clients.connected,
                clients.first_error.as_deref().unwrap_or("timed out")
            )
            .into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let peak = server.sample();
        clients.close().await;
        let closed_at = Instant::now();
        let mut curve = Vec::new();
        let mut open_zero_s = None;
        while closed_at.elapsed().as_secs_f64() <= o.flood_idle_secs {
            let t = closed_at.elapsed().as_secs_f64();
            if open_zero_s.is_none() && control.stats().await?.0 == 0 {
                open_zero_s = Some(t);
            }
            curve.push(json!([round3(t), server.sample().rss_kib]));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let after = server.sample();
        let goal_kib = 2 * pre.rss_kib + 20 * 1024;
        eprintln!(
            "  round {round}: RSS {} KiB before, {} KiB with {n} open, {} KiB {} s after \
             closing (goal {goal_kib} KiB: {})",
            pre.rss_kib,
            peak.rss_kib,
            after.rss_kib,
            o.flood_idle_secs,
            if after.rss_kib <= goal_kib {
                "met"
            } else {
                "missed"
            }
        );
        rounds.push(json!({
            "round": round,
            "rss_peak_kib": peak.rss_kib,
            "rss_after_kib": after.rss_kib,
            "fds_after": after.fds,
            "open_zero_s": open_zero_s.map(round3),
            "goal_kib": goal_kib,
            "goal_met": after.rss_kib <= goal_kib,
            "curve_t_rss_kib": curve,
        }));
    }
    let last = rounds.last().cloned().unwrap_or(Value::Null);
    Ok(vec![json!({
        "scenario": "flood",
        "mode": mode,
        "allocator": allocator,
        "clients": n,
        "idle_secs": o.flood_idle_secs,
        "rss_pre_kib": pre.rss_kib,
        "rss_peak_kib": last["rss_peak_kib"],
        "rss_after_kib": last["rss_after_kib"],
        "goal_kib": last["goal_kib"],
        "goal_met": last["goal_met"],
        "rounds": rounds,
    })])
}

async fn garbage_id(ctx: &Ctx, mode: &str) -> Result<Vec<Value>> {
    let o = &ctx.opts;
    let n = o.garbage_clients;
    ctx.check_fds(n)?;
    let mut records = Vec::new();
    for garbage in [false, true] {
        let what = if garbage {
            "never read, unknown Last-Event-ID"
        } else {
            "idle, no Last-Event-ID"
        };
        eprintln!(
            "garbage-id: {mode}, {} events of history, {n} connections: {what}",
            o.garbage_history
        );
        let extra = ["--history".to_owned(), o.garbage_history.to_string()];
        let server = Server::spawn_with(ctx, mode, o.heartbeat_ms, o.queue, &extra).await?;
        let mut control = Control::new(server.addr);
        // Fill the history in publishes of at most 1,000 events.
        let mut seq = 1;
        while seq <= o.garbage_history {
            let k = (o.garbage_history + 1 - seq).min(1_000);
            control.publish(k, o.garbage_bytes, seq).await?;
            seq += k;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let base = server.sample();
        let shared = Shared::new();
        let clients = connect_all_with(
            server.addr,
            n,
            o.connect_concurrency,
            |_| garbage && !o.garbage_reading,
            &shared,
            |i| ClientSpec {
                last_event_id: garbage.then(|| format!("garbage-{i}")),
                recv_buffer: None,
                // The control: each idle client gets one event, as each garbage-id one gets
                // the gap event.
                hello: !garbage && o.garbage_hello,
            },
        )
        .await;
        if clients.connected < n {
            return Err(format!(
                "{} of {n} connections failed ({})",
                n - clients.connected,
                clients.first_error.as_deref().unwrap_or("timed out")
            )
            .into());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let connected = server.sample();
        let (open, _) = control.stats().await?;
        let per_conn = (connected.rss_kib as f64 - base.rss_kib as f64) * 1024.0 / n.max(1) as f64;
        eprintln!(
            "  RSS {} -> {} KiB: {:.0} B per connection, {open} open",
            base.rss_kib, connected.rss_kib, per_conn
        );
        records.push(json!({
            "scenario": "garbage-id",
            "mode": mode,
            "garbage": garbage,
            "clients": n,
            "history": o.garbage_history,
            "event_bytes": o.garbage_bytes,
            "garbage_clients_read": garbage && o.garbage_reading,
            "idle_clients_got_one_event": !garbage && o.garbage_hello,
            "rss_base_kib": base.rss_kib,
            "rss_connected_kib": connected.rss_kib,
            "rss_per_conn_bytes": per_conn.round(),
            "open": open,
            "server_fds": connected.fds,
        }));
        clients.close().await;
        drop(server);
    }
    Ok(records)
}

// ---------------------------------------------------------------------------------------------
// The Redis backplane (issue 15)

/// A `redis-server` of our own on a free loopback port, without persistence. Dropping it
/// ends that process (by its pid).
struct RedisServer {
    child: Child,
    pid: u32,
    port: u16,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    async fn start(bin: &Path) -> Result<RedisServer> {
        // A port that was free a moment ago; redis-server fails to start if it was taken.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .args(["--maxclients", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut server = RedisServer {
            pid: child.id(),
            child,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = server.conn().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Ok(server);
                }
            }
            if !matches!(server.child.try_wait(), Ok(None)) || Instant::now() > deadline {
                return Err(format!("redis-server did not start on port {port}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// `cmdstat_NAME` → (calls, usec) from `INFO commandstats`.
    async fn commandstats(&self) -> Result<BTreeMap<String, (u64, u64)>> {
        let mut conn = self.conn().await?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        let mut stats = BTreeMap::new();
        for line in info.lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == key)
                    .and_then(|(_, v)| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            stats.insert(name.to_owned(), (field("calls"), field("usec")));
        }
        Ok(stats)
    }

    async fn reset_stats(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// `CLIENT LIST`: every client's fields, one map per client.
    async fn clients(&self) -> Result<Vec<BTreeMap<String, String>>> {
        let mut conn = self.conn().await?;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await?;
        Ok(list
            .lines()
            .map(|line| {
                line.split(' ')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect())
    }
}

/// The local ports of `pid`'s TCP connections to `remote_port` on loopback, from its socket
/// inodes (`/proc/PID/fd`) and `/proc/net/tcp`: which Redis clients belong to which server.
fn tcp_ports_to(pid: u32, remote_port: u16) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let remote = format!(":{remote_port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, rem, state, inode) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(9)?);
            (rem.ends_with(&remote) && *state == "01" && inodes.contains(*inode))
                .then(|| u16::from_str_radix(local.rsplit(':').next()?, 16).ok())
                .flatten()
        })
        .collect()
}

/// One or more load servers, on one Redis hub or alone, with N clients spread over them
/// (client `i` on server `i % servers`); publishes go through the first.
struct Fleet {
    servers: Vec<Server>,
    control: Control,
    shared: Arc<Shared>,
    clients: Vec<Clients>,
    base: Sample,
    connected: Sample,
}

impl Fleet {
    async fn new(
        ctx: &Ctx,
        mode: &str,
        instances: usize,
        redis: Option<(&RedisServer, &str)>,
        n: usize,
        queue: usize,
    ) -> Result<Fleet> {
        ctx.check_fds(n)?;
        let mut extra = Vec::new();
        if let Some((redis, hub)) = redis {
            extra = vec![
                "--redis".into(),
                redis.url(),
                "--hub".into(),
                hub.to_owned(),
            ];
        }
        let mut servers = Vec::new();
        for _ in 0..instances.max(1) {
            servers
                .push(Server::spawn_with(ctx, mode, ctx.opts.heartbeat_ms, queue, &extra).await?);
        }
        let mut control = Control::new(servers[0].addr);
        control.stats().await?;
        let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
        let base = Sample::of_all(&pids);
        let shared = Shared::new();
        let k = servers.len();
        let mut clients = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            let share = n / k + usize::from(i < n % k);
            let c = connect_all(
                server.addr,
                share,
                ctx.opts.connect_concurrency,
                |_| false,
                &shared,
            )
            .await;
            if c.connected < share {
                return Err(format!(
                    "{} of {share} connections to instance {i} failed ({})",
                    share - c.connected,
                    c.first_error.as_deref().unwrap_or("timed out")
                )
                .into());
            }
            clients.push(c);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connected = Sample::of_all(&pids);
        Ok(Fleet {
            servers,
            control,
            shared,
            clients,
            base,
            connected,
        })
    }

    fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.pid).collect()
    }

    fn target<'a>(&'a mut self, redis: Option<&RedisServer>) -> Target<'a> {
        let servers = self.pids();
        Target {
            shared: self.shared.clone(),
            control: &mut self.control,
            servers,
            helpers: redis.map(|r| r.pid).into_iter().collect(),
        }
    }

    fn readers(&self) -> u64 {
        self.clients.iter().map(|c| c.connected as u64).sum()
    }

    async fn finish(self) {
        for c in self.clients {
            c.close().await;
        }
        drop(self.servers);
    }
}

/// `count` publishes of one event at `rate` per second through the target's control
/// connection; per event, the time from its publish to the last client's read.
async fn paced_latency(
    target: Target<'_>,
    rate: f64,
    count: u64,
    bytes: usize,
    readers: u64,
    seq: &mut u64,
    stall: Duration,
) -> Value {
    let Target {
        shared,
        control,
        servers,
        helpers,
    } = target;
    let seq0 = *seq;
    shared.reset_latency(seq0, 1);
    let d0 = shared.delivered.load(Ordering::SeqCst);
    let cpu0 = Sample::of_all(&servers);
    let helpers0 = Sample::of_all(&helpers);
    let me0 = Sample::of(std::process::id());
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut error = None;
    let mut published = 0;
    for i in 0..count {
        tokio::time::sleep_until(start + interval * i as u32).await;
        if let Err(e) = control.publish(1, bytes, seq0 + i).await {
            error = Some(format!("publish: {e}"));
            break;
        }
        published += 1;
    }
    let publish_secs = start.elapsed().as_secs_f64();
    *seq += count;
    if !shared.wait_delivered(d0 + published * readers, stall).await {
        error.get_or_insert_with(|| "not every event reached every client".into());
    }
    let cpu1 = Sample::of_all(&servers);
    let helpers1 = Sample::of_all(&helpers);
    let me1 = Sample::of(std::process::id());
    let lat = shared.latency(published, readers);
    json!({
        "publishes": published,
        "rate_target": rate,
        "rate_achieved": round3(published as f64 / publish_secs.max(1e-9)),
        "bytes": bytes,
        "readers": readers,
        "latency": lat.json(),
        "server_cpu_pct": round3(cpu1.cpu_pct_since(&cpu0)),
        "helper_cpu_pct": round3(helpers1.cpu_pct_since(&helpers0)),
        "loadgen_cpu_pct": round3(me1.cpu_pct_since(&me0)),
        "other_cpu_pct": round3(other_cpu_pct(
            (&cpu0.with_cpu_of(&helpers0), &cpu1.with_cpu_of(&helpers1)),
            (&me0, &me1)
        )),
        "error": error,
    })
}

/// Hub names unique within this run, so no fleet reads another's history.
fn fresh_hub(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "loadgen-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `backplane`: per configuration (`single`: one instance, no backplane; `redis-1`: one
/// instance on a Redis hub; `redis-2`: two instances on one hub, clients spread over both,
/// publishes through the first), publish-to-delivery latency at `--bp-rate` publishes/s,
/// then saturated closed-loop fan-out. Repeated `--bp-reps` times, the order of the
/// configurations reversed every other repetition.
async fn backplane(ctx: &Ctx, mode: &str) -> Result<Vec<Value>> {
    let o = &ctx.opts;
    let mut records = Vec::new();
    for rep in 0..o.bp_reps {
        let mut configs = o.bp_configs.clone();
        if rep % 2 == 1 {
            configs.reverse();
        }
        for config in configs {
            let (instances, with_redis) = match config.as_str() {
                "single" => (1, false),
                "redis-1" => (1, true),
                "redis-2" => (2, true),
                other => return Err(format!("unknown backplane configuration {other}").into()),
            };
            eprintln!(
                "backplane: {mode}, {config}, {} clients (rep {rep})",
                o.bp_clients
            );
            let redis = match with_redis {
                true => Some(RedisServer::start(&o.redis_server).await?),
                false => None,
            };
            let hub = fresh_hub("fanout");
            let mut fleet = Fleet::new(
                ctx,
                mode,
                instances,
                redis.as_ref().map(|r| (r, hub.as_str())),
                o.bp_clients,
                o.fanout_queue,
            )
            .await?;
            let readers = fleet.readers();
            let base = json!({
                "scenario": "backplane",
                "mode": mode,
                "config": config,
                "instances": instances,
                "redis": with_redis,
                "rep": rep,
                "clients": readers,
                "rss_base_kib": fleet.base.rss_kib,
                "rss_connected_kib": fleet.connected.rss_kib,
            });
            let mut seq = 1;
            let count = (o.bp_rate * o.bp_secs).round() as u64;
            let lat = paced_latency(
                fleet.target(redis.as_ref()),
                o.bp_rate,
                count,
                o.bytes,
                readers,
                &mut seq,
                ctx.stall(),
            )
            .await;
            eprintln!(
                "  {} publishes/s: p50 {} ms, p99 {} ms, max {} ms; server CPU {} %, redis {} %",
                lat["rate_achieved"],
                lat["latency"]["p50_ms"],
                lat["latency"]["p99_ms"],
                lat["latency"]["max_ms"],
                lat["server_cpu_pct"],
                lat["helper_cpu_pct"]
            );
            records.push(merge(merge(base.clone(), json!({"part": "latency"})), lat));
            for (variant, per_publish, window) in [
                ("single", 1, o.single_window),
                ("pipelined", 1, o.pipeline_window),
                ("coalesced", o.burst, o.burst_window),
            ] {
                if !o.bp_variants.iter().any(|v| v == variant) {
                    continue;
                }
                let spec = LoopSpec {
                    per_publish,
                    window,
                    bytes: o.bytes,
                    duration: Duration::from_secs_f64(o.bp_fanout_secs),
                    max_events: u64::MAX,
                    readers,
                };
                let r =
                    closed_loop(fleet.target(redis.as_ref()), &spec, &mut seq, ctx.stall()).await;
                eprintln!(
                    "  fanout {variant}: {} deliveries/s, {} events/read, server CPU {} %, redis {} %",
                    r["deliveries_per_s"], r["events_per_read"], r["server_cpu_pct"], r["helper_cpu_pct"]
                );
                records.push(merge(
                    merge(base.clone(), json!({"part": "fanout", "variant": variant})),
                    r,
                ));
            }
            fleet.finish().await;
            drop(redis);
        }
    }
    Ok(records)
}

/// `backplane-cost`: for each of `--bp-cost-clients` client counts, two instances on one
/// hub with the clients spread over them; `--bp-cost-publishes` publishes at `--bp-rate`
/// per second through the first; Redis's `INFO commandstats` deltas per publish, and its
/// connections per instance (`CLIENT LIST`, matched to each server by its sockets).
async fn backplane_cost(ctx: &Ctx, mode: &str) -> Result<Vec<Value>> {
    let o = &ctx.opts;
    let redis = RedisServer::start(&o.redis_server).await?;
    let mut records = Vec::new();
    for &n in &o.bp_cost_clients {
        eprintln!(
            "backplane-cost: {mode}, 2 instances, {n} clients, {} publishes",
            o.bp_cost_publishes
        );
        let hub = fresh_hub("cost");
        let mut fleet = Fleet::new(ctx, mode, 2, Some((&redis, hub.as_str())), n, o.queue).await?;
        let readers = fleet.readers();
        // Every instance has reported its presence at least once.
        tokio::time::sleep(Duration::from_secs(2)).await;
        redis.reset_stats().await?;
        let t0 = Instant::now();
        let mut seq = 1;
        let lat = paced_latency(
            fleet.target(Some(&redis)),
            o.bp_rate,
            o.bp_cost_publishes,
            o.bytes,
            readers,
            &mut seq,
            ctx.stall(),
        )
        .await;
        let window = t0.elapsed().as_secs_f64();
        let stats = redis.commandstats().await?;
        let clients = redis.clients().await?;
        let published = lat["publishes"].as_u64().unwrap_or(0).max(1);
        let per_instance: Vec<Value> = fleet
            .servers
            .iter()
            .map(|s| {
                let ports = tcp_ports_to(s.pid, redis.port);
                let of_this: Vec<&BTreeMap<String, String>> = clients
                    .iter()
                    .filter(|c| {
                        c.get("addr")
                            .and_then(|a| a.rsplit(':').next())
                            .and_then(|p| p.parse::<u16>().ok())
                            .is_some_and(|p| ports.contains(&p))
                    })
                    .collect();
                let count = |key: &str| {
                    of_this
                        .iter()
                        .filter_map(|c| c.get(key)?.parse::<u64>().ok())
                        .sum::<u64>()
                };
                json!({
                    "redis_connections": ports.len(),
                    "in_client_list": of_this.len(),
                    "subscriptions": count("sub") + count("psub") + count("ssub"),
                    "blocked_in": of_this.iter().filter_map(|c| c.get("cmd").cloned()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let calls: BTreeMap<&String, f64> = stats
            .iter()
            .filter(|(name, _)| {
                !matches!(name.as_str(), "info" | "client|list" | "config|resetstat")
            })
            .map(|(name, (calls, _))| (name, *calls as f64 / published as f64))
            .collect();
        let total: f64 = calls.values().sum();
        // What the instances send (a round trip each, pipelined or not) against what the
        // scripts run inside Redis.
        let sent: f64 = calls
            .iter()
            .filter(|(name, _)| {
                matches!(
                    name.as_str(),
                    "evalsha" | "eval" | "xread" | "xrange" | "xrevrange" | "ping" | "publish"
                )
            })
            .map(|(_, v)| *v)
            .sum();
        let usec: u64 = stats.values().map(|(_, u)| u).sum();
        eprintln!(
            "  {n} clients: {total:.2} Redis commands per publish ({sent:.2} sent by the instances); \
             Redis connections per instance {:?}; p99 {} ms",
            per_instance.iter().map(|i| i["redis_connections"].clone()).collect::<Vec<_>>(),
            lat["latency"]["p99_ms"]
        );
        records.push(merge(
            json!({
                "scenario": "backplane-cost",
                "mode": mode,
                "instances": 2,
                "clients": readers,
                "window_s": round3(window),
                "commands_per_publish": calls.iter().map(|(k, v)| ((*k).clone(), round3(*v))).collect::<serde_json::Map<_, _>>(),
                "commands_per_publish_total": round3(total),
                "sent_per_publish": round3(sent),
                "redis_usec_per_publish": round3(usec as f64 / published as f64),
                "redis_clients_total": clients.len(),
                "per_instance": per_instance,
            }),
            lat,
        ));
        fleet.finish().await;
    }
    Ok(records)
}

/// `redis-benchmark ARGS -q` on `port`: requests per second per test.
fn redis_benchmark(bin: &Path, port: u16, args: &[&str]) -> Result<Vec<(String, f64)>> {
    let out = Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    // `-q` prints "TEST: N requests per second, p50=..." per test, after carriage-return
    // progress lines.
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let results: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(": ")?;
            let rate = rest.split_whitespace().next()?.parse().ok()?;
            rest.contains("requests per second")
                .then(|| (name.trim().to_owned(), rate))
        })
        .collect();
    if results.is_empty() {
        return Err(format!("redis-benchmark {args:?} printed no rate: {text:?}").into());
    }
    Ok(results)
}

/// `backplane-rate`: the publish rate through the backplane from one task (`publish` in a
/// tight loop, and `publish_confirmed` with `--bp-inflight` in flight), against
/// `redis-benchmark`'s `PUBLISH` of an event-sized payload (its defaults: 50 connections,
/// no pipelining; and one connection pipelining 256, the shape of the backplane's writer)
/// and `XADD … MAXLEN ~ 10000`, on the same Redis, alternated `--bp-rate-reps` times.
async fn backplane_rate(ctx: &Ctx, mode: &str) -> Result<Vec<Value>> {
    let o = &ctx.opts;
    let redis = RedisServer::start(&o.redis_server).await?;
    let hub = fresh_hub("rate");
    let fleet = Fleet::new(ctx, mode, 1, Some((&redis, hub.as_str())), 0, o.queue).await?;
    let mut control = Control::new(fleet.servers[0].addr);
    let n = o.bp_burst.to_string();
    let mut records = Vec::new();
    for rep in 0..o.bp_rate_reps {
        let mut row = serde_json::Map::new();
        let bench = |args: &[&str]| redis_benchmark(&o.redis_benchmark, redis.port, args);
        // redis-benchmark 7.0 has no built-in PUBLISH or XADD test: the commands are given,
        // with a payload of the events' size.
        let payload = "x".repeat(o.bytes);
        let publish = ["-n", &n, "publish", "loadgen-channel", &payload];
        let raw = tokio::task::block_in_place(|| bench(&publish))?;
        row.insert("redis_benchmark_publish".into(), json!(raw[0].1));
        let cpu0 = Sample::of(redis.pid);
        for inflight in [0, o.bp_inflight] {
            let path = format!(
                "/publish-burst?n={}&inflight={inflight}&bytes={}",
                o.bp_burst, o.bytes
            );
            let body = control.request(Method::POST, &path).await?;
            let v: Value = serde_json::from_slice(&body)?;
            if let Some(e) = v["error"].as_str() {
                return Err(format!("publish-burst: {e}").into());
            }
            let key = if inflight == 0 {
                "backplane_publish"
            } else {
                "backplane_publish_confirmed"
            };
            row.insert(key.into(), v["per_s"].clone());
            row.insert(format!("{key}_overloaded"), v["overloaded"].clone());
        }
        let redis_cpu = Sample::of(redis.pid).cpu_pct_since(&cpu0);
        let piped = tokio::task::block_in_place(|| {
            bench(&[&["-c", "1", "-P", "256"][..], &publish[..]].concat())
        })?;
        row.insert("redis_benchmark_publish_c1_p256".into(), json!(piped[0].1));
        let xadd = tokio::task::block_in_place(|| {
            bench(&[
                "-n",
                &n,
                "xadd",
                "loadgen-stream",
                "MAXLEN",
                "~",
                "10000",
                "*",
                "d",
                &payload,
            ])
        })?;
        row.insert("redis_benchmark_xadd".into(), json!(xadd[0].1));
        let ratio = row["backplane_publish"].as_f64().unwrap_or(0.0) / raw[0].1.max(1.0);
        eprintln!(
            "backplane-rate rep {rep}: publish {} /s, confirmed ({} in flight) {} /s; \
             redis-benchmark PUBLISH {} /s (-c 1 -P 256: {}), XADD {} /s; publish / raw PUBLISH {ratio:.2}",
            row["backplane_publish"],
            o.bp_inflight,
            row["backplane_publish_confirmed"],
            raw[0].1,
            piped[0].1,
            xadd[0].1
        );
        let mut record = json!({
            "scenario": "backplane-rate",
            "mode": mode,
            "rep": rep,
            "publishes": o.bp_burst,
            "inflight": o.bp_inflight,
            "bytes": o.bytes,
            "redis_cpu_pct_during_backplane": round3(redis_cpu),
            "publish_over_raw": round3(ratio),
        });
        if let Some(obj) = record.as_object_mut() {
            obj.extend(row);
        }
        records.push(record);
    }
    fleet.finish().await;
    Ok(records)
}

// ---------------------------------------------------------------------------------------------
// Summary

fn print_summary(records: &[Value]) {
    let mut by_key: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in records {
        let key = match (r["scenario"].as_str(), r["variant"].as_str()) {
            (Some(s), Some(v)) => format!("{s}/{v}"),
            (Some("slow"), None) => format!("slow/{}%", r["slow_pct"]),
            (Some("backplane"), None) => format!("backplane/{}", r["part"].as_str().unwrap_or("?")),
            (Some(s), None) => s.to_owned(),
            _ => continue,
        };
        by_key.entry(key).or_default().push(r);
    }
    eprintln!("\n== summary ==");
    for (key, rows) in by_key {
        eprintln!("{key}:");
        for r in rows {
            let mode = r["mode"].as_str().unwrap_or("?");
            if let Some(e) = r["error"].as_str() {
                eprintln!("  {mode:<16} ERROR {e}");
            }
            let line = match r["scenario"].as_str() {
                Some("fanout") | Some("slow") => format!(
                    "{} deliveries/s, {} events/read, p50 {} ms, p99 {} ms, server CPU {} %, {} B/conn",
                    r["deliveries_per_s"],
                    r["events_per_read"],
                    r["latency"]["p50_ms"],
                    r["latency"]["p99_ms"],
                    r["server_cpu_pct"],
                    r["rss_per_conn_bytes"]
                ),
                Some("latency") => format!(
                    "p50 {} ms, p99 {} ms, max {} ms ({} events, {} incomplete)",
                    r["latency"]["p50_ms"],
                    r["latency"]["p99_ms"],
                    r["latency"]["max_ms"],
                    r["latency"]["events"],
                    r["latency"]["incomplete_events"]
                ),
                Some("idle") => format!(
                    "{} clients: server CPU {} % of a core, {} heartbeats/s, {} B/conn",
                    r["clients"], r["server_cpu_pct"], r["heartbeats_per_s"], r["rss_per_conn_bytes"]
                ),
                Some("stuck") => format!(
                    "stall {} ms: sockets gone after {} s, RSS {} -> max {} -> {} KiB, fds {} -> {}",
                    r["stall_ms"],
                    r["sockets_gone_s"],
                    r["rss_base_kib"],
                    r["rss_max_kib"],
                    r["rss_end_kib"],
                    r["fds_connected"],
                    r["fds_end"]
                ),
                Some("flood") => format!(
                    "{}: RSS {} -> {} -> {} KiB after {} s (goal {} KiB, met: {})",
                    r["allocator"],
                    r["rss_pre_kib"],
                    r["rss_peak_kib"],
                    r["rss_after_kib"],
                    r["idle_secs"],
                    r["goal_kib"],
                    r["goal_met"]
                ),
                Some("backplane") => format!(
                    "{} ({} instance(s)): {} deliveries/s, p50 {} ms, p99 {} ms, server CPU {} %, redis {} %",
                    r["config"],
                    r["instances"],
                    r["deliveries_per_s"],
                    r["latency"]["p50_ms"],
                    r["latency"]["p99_ms"],
                    r["server_cpu_pct"],
                    r["helper_cpu_pct"]
                ),
                Some("backplane-cost") => format!(
                    "{} clients: {} Redis commands per publish ({} sent by the instances), connections per instance {}",
                    r["clients"],
                    r["commands_per_publish_total"],
                    r["sent_per_publish"],
                    r["per_instance"]
                        .as_array()
                        .map(|a| a.iter().map(|i| i["redis_connections"].to_string()).collect::<Vec<_>>().join("/"))
                        .unwrap_or_default()
                ),
                Some("backplane-rate") => format!(
                    "publish {} /s, confirmed {} /s, redis-benchmark PUBLISH {} /s, XADD {} /s: {}x raw PUBLISH",
                    r["backplane_publish"],
                    r["backplane_publish_confirmed"],
                    r["redis_benchmark_publish"],
                    r["redis_benchmark_xadd"],
                    r["publish_over_raw"]
                ),
                Some("garbage-id") => format!(
                    "garbage {}: {} B/conn ({} clients, {} events of history)",
                    r["garbage"], r["rss_per_conn_bytes"], r["clients"], r["history"]
                ),
                Some("churn") => format!(
                    "{} cycles/s, p99 {} ms, open {}->{}, tasks {}->{}, RSS {}->{} KiB",
                    r["cycles_per_s"],
                    r["cycle_p99_ms"],
                    r["open_start"],
                    r["open_end"],
                    r["tasks_start"],
                    r["tasks_end"],
                    r["rss_start_kib"],
                    r["rss_end_kib"]
                ),
                _ => String::new(),
            };
            eprintln!("  {mode:<16} {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], split: usize) -> Vec<Line> {
        let mut out = Vec::new();
        let mut reader = SseReader::default();
        for part in input.chunks(split) {
            reader.feed(part, &mut |line| out.push(line));
        }
        out
    }

    #[test]
    fn chunked_events_and_heartbeats_in_any_split() {
        let body = b"1a\r\nid: 9\ndata: 42 1700 xxxx\n\n\r\n3\r\n:\n\n\r\n\
            2d\r\ndata: 43 1800 yy\n\ndata: 44 1900 zzzzzzzzzzz\n\n\r\n0\r\n\r\n";
        let expected = vec![
            Line::Event { seq: 42, ts: 1700 },
            Line::Comment,
            Line::Event { seq: 43, ts: 1800 },
            Line::Event { seq: 44, ts: 1900 },
        ];
        for split in 1..body.len() {
            assert_eq!(lines(body, split), expected, "split every {split} bytes");
        }
    }

    #[test]
    fn long_lines_and_bad_numbers() {
        let data = format!("data: 7 {}\n\ndata: x y\n\n", "1".repeat(200));
        let body = format!("{:x}\r\n{data}\r\n", data.len());
        assert_eq!(
            lines(body.as_bytes(), 5),
            vec![
                Line::Event { seq: 7, ts: 0 },
                Line::Event {
                    seq: u64::MAX,
                    ts: 0
                }
            ]
        );
    }
}
