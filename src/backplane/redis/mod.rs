//! The Redis engine: one stream per hub carries every operation of every instance.

mod codec;
mod link;
mod reader;
mod scripts;
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::link::{Link, Servers};
use self::reader::Position;
use self::writer::Outgoing;
use crate::manager::broker::{Ack, Backplane, BackplaneError, Engine, Op, Sink};

/// A Redis backplane: managers built with the same Redis and hub name behave as one hub.
/// See the [module documentation](crate::backplane).
///
/// Cloning is cheap and shares the same connections. Keep a clone to ask for the
/// [cluster view](Self::cluster_stats).
#[derive(Clone)]
pub struct RedisBackplane {
    inner: Arc<Inner>,
}

/// Configures a [`RedisBackplane`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisBackplaneBuilder {
    servers: Servers,
    hub: String,
    max_len: usize,
    max_age: Option<Duration>,
    block: Duration,
    presence: Duration,
    queue: usize,
}

/// What every instance of a hub reports: its open connections.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Every live instance and its open connections, as each last reported them.
    pub instances: Vec<InstanceStats>,
    /// Open connections across every live instance.
    pub open: u64,
}

/// One instance in [`ClusterStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstanceStats {
    /// The instance's number, as its connection ids carry it.
    pub instance: u32,
    /// Its open connections.
    pub open: u64,
}

/// The keys of one hub, all in one hash slot (`{hub}`), so a Redis Cluster keeps them
/// together and every script touches one node.
#[derive(Debug)]
struct Keys {
    stream: String,
    meta: String,
    alive: String,
    open: String,
    keys_prefix: String,
}

impl Keys {
    fn new(hub: &str) -> Self {
        let tag = format!("{{{hub}}}");
        Keys {
            stream: format!("{tag}:stream"),
            meta: format!("{tag}:meta"),
            alive: format!("{tag}:alive"),
            open: format!("{tag}:open"),
            keys_prefix: format!("{tag}:keys:"),
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    max_len: usize,
    max_age_ms: u64,
    block: Duration,
    presence: Duration,
}

/// What the engine's tasks share. They hold this, never the engine itself, so dropping the
/// last manager and handle stops them.
#[derive(Debug)]
struct Shared {
    instance: u32,
    keys: Keys,
    settings: Settings,
    servers: Servers,
    up: AtomicBool,
    append_sha: String,
    /// The epoch this instance proposes if Redis has none (after it lost its data).
    epoch_candidate: String,
    presence: Mutex<Presence>,
    shutdown: CancellationToken,
}

impl Shared {
    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn set_up(&self) {
        self.up.store(true, Ordering::Release);
    }

    fn set_down(&self) {
        self.up.store(false, Ordering::Release);
    }
}

/// This instance's connections, as the cluster view will see them.
#[derive(Debug, Default)]
struct Presence {
    open: usize,
    keys: HashMap<String, usize>,
    /// Keys whose count changed since the last report.
    changed: Vec<String>,
}

/// What is handed over to the tasks once, when the manager starts them.
#[derive(Debug)]
struct Start {
    write: Link,
    read: Link,
    rx: mpsc::Receiver<Outgoing>,
    /// The entries already in Redis when this instance connected, oldest first.
    backfill: Vec<codec::Entry>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Outgoing>,
    start: Mutex<Option<Start>>,
    /// For the cluster view: the writer's multiplexed connection, shared (it reconnects by
    /// itself), so a query costs Redis no new connection.
    view: Link,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("instance", &self.shared.instance)
            .field("up", &self.shared.is_up())
            .field("servers", &self.shared.servers)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

/// A random number from the process's hash seed, the time and a counter: distinct across
/// instances without a dependency for randomness.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() as u32).max(1)
}

impl RedisBackplane {
    /// Configures a backplane on one Redis server, such as `redis://127.0.0.1:6379`.
    pub fn builder(url: impl Into<String>) -> RedisBackplaneBuilder {
        RedisBackplaneBuilder::new(Servers::One(url.into()))
    }

    /// Configures a backplane on a Redis Cluster, given some of its nodes. The hub's keys
    /// share one hash slot, so one node (and its replicas) carries a hub.
    pub fn cluster_builder<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
    ) -> RedisBackplaneBuilder {
        RedisBackplaneBuilder::new(Servers::Cluster(
            nodes.into_iter().map(Into::into).collect(),
        ))
    }

    /// Connects with the default settings (see [`RedisBackplaneBuilder`]).
    ///
    /// # Errors
    ///
    /// Redis is unreachable, or refused the scripts.
    pub async fn connect(url: impl Into<String>) -> redis::RedisResult<RedisBackplane> {
        Self::builder(url).connect().await
    }

    /// This instance's number, carried by the ids of its connections.
    pub fn instance(&self) -> u32 {
        self.inner.shared.instance
    }

    /// Whether Redis is reachable now. While it is not, publishes and routed sends fail
    /// at once with [`BackplaneError::Unavailable`], and open streams stay open.
    pub fn is_up(&self) -> bool {
        self.inner.shared.is_up()
    }

    /// Every live instance of the hub and its open connections. Eventually consistent: an
    /// instance reports every [presence interval](RedisBackplaneBuilder::presence_interval),
    /// so counts are at most that old, and a dead instance drops out after three intervals.
    ///
    /// # Errors
    ///
    /// [`BackplaneError::Unavailable`] if Redis does not answer.
    pub async fn cluster_stats(&self) -> Result<ClusterStats, BackplaneError> {
        let (ids, opens, _) = self.cluster_query("").await?;
        let instances: Vec<InstanceStats> = ids
            .into_iter()
            .zip(opens)
            .map(|(instance, open)| InstanceStats { instance, open })
            .collect();
        let open = instances.iter().map(|i| i.open).sum();
        Ok(ClusterStats { instances, open })
    }

    /// Whether any live instance holds a connection of `key` (presence), with the same
    /// staleness as [`cluster_stats`](Self::cluster_stats).
    ///
    /// # Errors
    ///
    /// [`BackplaneError::Unavailable`] if Redis does not answer.
    pub async fn is_connected(&self, key: &str) -> Result<bool, BackplaneError> {
        Ok(self.cluster_query(key).await?.2)
    }

    async fn cluster_query(&self, key: &str) -> Result<(Vec<u32>, Vec<u64>, bool), BackplaneError> {
        let shared = &self.inner.shared;
        let mut link = self.inner.view.clone();
        let reply: Value = redis::Script::new(scripts::CLUSTER)
            .key(&shared.keys.alive)
            .key(&shared.keys.open)
            .arg(3 * shared.settings.presence.as_millis() as u64)
            .arg(&shared.keys.keys_prefix)
            .arg(key)
            .invoke_async(&mut link)
            .await
            .map_err(|_| BackplaneError::Unavailable)?;
        let Value::Array(parts) = reply else {
            return Err(BackplaneError::Unavailable);
        };
        let list = |v: Option<&Value>| -> Vec<String> {
            match v {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|i| redis::from_redis_value_ref::<String>(i).ok())
                    .collect(),
                _ => Vec::new(),
            }
        };
        let ids = list(parts.first())
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let opens = list(parts.get(1))
            .iter()
            .map(|s| s.parse().unwrap_or(0))
            .collect();
        let found = matches!(parts.get(2), Some(Value::Int(1)));
        Ok((ids, opens, found))
    }
}

impl From<RedisBackplane> for Backplane {
    fn from(b: RedisBackplane) -> Backplane {
        Backplane::new(b.inner)
    }
}

impl RedisBackplaneBuilder {
    fn new(servers: Servers) -> Self {
        RedisBackplaneBuilder {
            servers,
            hub: "tower-sse".to_owned(),
            max_len: 10_000,
            max_age: Some(Duration::from_secs(300)),
            block: Duration::from_secs(1),
            presence: Duration::from_secs(2),
            queue: 65_536,
        }
    }

    /// The hub's name (default `tower-sse`): managers with the same Redis and name form one
    /// hub; other names are other hubs, on the same Redis.
    pub fn hub(mut self, name: impl Into<String>) -> Self {
        self.hub = name.into();
        self
    }

    /// The history Redis keeps for the hub: about `max_len` operations (trimmed in whole
    /// blocks, so a little more), none older than `max_age` (default 10,000 and 5 minutes).
    /// Key sends and completions count as operations too. A client whose last id is no
    /// longer held gets the gap event.
    pub fn history(mut self, max_len: usize, max_age: Option<Duration>) -> Self {
        self.max_len = max_len.max(1);
        self.max_age = max_age;
        self
    }

    /// The longest a read of the stream blocks (default 1 s). A read that has not come back
    /// 2 s later means a stalled connection: it is replaced.
    pub fn block_time(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(10));
        self
    }

    /// How often this instance reports its connections for the cluster view (default 2 s).
    pub fn presence_interval(mut self, interval: Duration) -> Self {
        self.presence = interval.max(Duration::from_millis(100));
        self
    }

    /// The most operations waiting for Redis; past it sends fail with
    /// [`BackplaneError::Overloaded`] (default 65,536).
    pub fn queue(mut self, max: usize) -> Self {
        self.queue = max.max(1);
        self
    }

    /// Connects to Redis, loads the scripts and reads the history already there, so that a
    /// manager built with this backplane can resume clients at once.
    ///
    /// # Errors
    ///
    /// Redis is unreachable, or refused the scripts.
    pub async fn connect(self) -> redis::RedisResult<RedisBackplane> {
        let keys = Keys::new(&self.hub);
        let mut write = Link::open(&self.servers, Duration::from_secs(2)).await?;
        let read = Link::open(&self.servers, self.block + Duration::from_secs(2)).await?;
        let append_sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(scripts::APPEND)
            .query_async(&mut write)
            .await?;
        // The newest entries, newest first.
        let newest: Value = redis::cmd("XREVRANGE")
            .arg(&keys.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(self.max_len)
            .query_async(&mut write)
            .await?;
        let mut backfill: Vec<codec::Entry> = match newest {
            Value::Array(items) => items.iter().filter_map(codec::decode).collect(),
            _ => Vec::new(),
        };
        backfill.reverse();
        let (tx, rx) = mpsc::channel(self.queue);
        let shared = Arc::new(Shared {
            instance: random_u32(),
            keys,
            settings: Settings {
                max_len: self.max_len,
                max_age_ms: self.max_age.map_or(0, |a| a.as_millis() as u64),
                block: self.block,
                presence: self.presence,
            },
            servers: self.servers,
            up: AtomicBool::new(true),
            append_sha,
            epoch_candidate: format!("{:08x}", random_u32()),
            presence: Mutex::new(Presence::default()),
            shutdown: CancellationToken::new(),
        });
        Ok(RedisBackplane {
            inner: Arc::new(Inner {
                shared,
                tx,
                view: write.clone(),
                start: Mutex::new(Some(Start {
                    write,
                    read,
                    rx,
                    backfill,
                })),
            }),
        })
    }
}

impl Engine for Inner {
    fn instance(&self) -> u32 {
        self.shared.instance
    }

    fn send(&self, op: Op, ack: Option<Ack>) -> Result<(), BackplaneError> {
        if !self.shared.is_up() {
            return Err(BackplaneError::Unavailable);
        }
        let out = Outgoing {
            fields: codec::encode(&op),
            ack,
        };
        self.tx.try_send(out).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BackplaneError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => BackplaneError::Unavailable,
        })
    }

    fn start(&self, sink: Arc<dyn Sink>) {
        let Some(start) = self.start.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let Start {
            write,
            read,
            rx,
            backfill,
        } = start;
        // What Redis held when this instance connected, read by the same rules as what
        // comes later (so its epochs and numbers agree with every other instance's), but
        // history only: past sends and completions are not applied again.
        let mut at = Position::new("0-0".to_owned(), None, 0);
        for entry in backfill {
            if at.take(&entry, &*sink) && entry.is_publish() {
                if let (Some(n), Some(op)) = (entry.n, entry.op) {
                    sink.apply(n, entry.origin, op);
                }
            }
        }
        tokio::spawn(writer::run(self.shared.clone(), write.clone(), rx));
        tokio::spawn(reader::run(self.shared.clone(), read, sink, at));
        tokio::spawn(presence(self.shared.clone(), write));
    }

    fn report(&self, open: usize, key: Option<(&str, isize)>) {
        let mut p = self
            .shared
            .presence
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.open = open;
        if let Some((key, delta)) = key {
            let count = p.keys.entry(key.to_owned()).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                p.keys.remove(key);
            }
            p.changed.push(key.to_owned());
        }
    }
}

/// Reports this instance's connections every interval, for the cluster view.
async fn presence(shared: Arc<Shared>, mut link: Link) {
    let mut tick = tokio::time::interval(shared.settings.presence);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let script = redis::Script::new(scripts::PRESENCE);
    let ttl = 3 * shared.settings.presence.as_millis() as u64;
    let keys_hash = format!("{}{}", shared.keys.keys_prefix, shared.instance);
    // Every key is sent once after a reconnect, since its hash may have expired.
    let mut resend_all = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let (open, changes) = {
            let mut p = shared.presence.lock().unwrap_or_else(|e| e.into_inner());
            let mut changed = std::mem::take(&mut p.changed);
            if resend_all {
                changed.extend(p.keys.keys().cloned());
            }
            changed.sort_unstable();
            changed.dedup();
            let changes: Vec<(String, usize)> = changed
                .into_iter()
                .map(|k| {
                    let n = p.keys.get(&k).copied().unwrap_or(0);
                    (k, n)
                })
                .collect();
            (p.open, changes)
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&shared.keys.alive)
            .key(&shared.keys.open)
            .key(&keys_hash)
            .arg(shared.instance)
            .arg(open)
            .arg(ttl);
        for (key, n) in &changes {
            invocation.arg(key).arg(*n);
        }
        match invocation.invoke_async::<Value>(&mut link).await {
            Ok(_) => resend_all = false,
            Err(_) => {
                resend_all = true;
                // Lost: report them again next time.
                let mut p = shared.presence.lock().unwrap_or_else(|e| e.into_inner());
                p.changed.extend(changes.into_iter().map(|(k, _)| k));
            }
        }
    }
}
