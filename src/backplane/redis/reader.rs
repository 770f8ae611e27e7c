//! The reader: follows the hub's stream with blocking reads, and hands every entry to the
//! manager in order. Each read waits at most the block time, so a read that does not come
//! back in time means the connection stalled: it is replaced, and reading resumes after
//! the last entry received. Numbers that skip tell what was lost; an epoch that changes
//! tells that Redis lost its data. Either way the manager sends the gap event: never a
//! silent hole.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::codec::{decode, Entry};
use super::link::Link;
use super::{scripts, Shared};
use crate::manager::broker::Sink;

/// Entries per read.
const COUNT: usize = 1024;

/// Where the reader stands in the stream.
#[derive(Debug, Clone)]
pub(super) struct Position {
    /// The last stream id read (`0-0`: from the start).
    pub(super) last_id: String,
    /// The epoch of the last entry read, as Redis has it.
    pub(super) epoch: Option<String>,
    /// The number of the last entry read in `epoch`.
    pub(super) last_n: u64,
    /// The tag the manager knows the current numbering by: the epoch, unless Redis numbered
    /// again from an older point within it (see [`take`](Self::take)).
    pub(super) tag: Option<String>,
    /// An epoch to retire in Redis, because its numbers went back.
    pub(super) retire: Option<String>,
}

impl Position {
    pub(super) fn new(last_id: String, epoch: Option<String>, last_n: u64) -> Self {
        Position {
            last_id,
            tag: epoch.clone(),
            epoch,
            last_n,
            retire: None,
        }
    }

    /// Takes one entry: tells the sink about a new numbering or a hole first. Returns
    /// whether the entry is to be applied.
    pub(super) fn take(&mut self, entry: &Entry, sink: &dyn Sink) -> bool {
        let Some(n) = entry.n else {
            // Not one of ours: step over it.
            self.last_id.clone_from(&entry.id);
            return false;
        };
        if entry.epoch != self.epoch {
            // Redis lost its data: a new epoch.
            self.epoch.clone_from(&entry.epoch);
            self.tag.clone_from(&entry.epoch);
            if let Some(tag) = &self.tag {
                sink.epoch(tag, n);
            }
            self.last_n = n.saturating_sub(1);
        } else if n <= self.last_n {
            // A read returns only entries after the last one read, so within an epoch a
            // number that does not grow is no repeat: Redis numbered again from an older
            // point (a failover to a replica that had not received the newest entries), and
            // the ids it gives again would name other events. Every instance meets this
            // entry first, so each derives the same new tag from it; the epoch is retired in
            // Redis, so that later appends start a genuinely new one.
            if let Some(epoch) = &self.epoch {
                let tag = format!("{epoch}.{}", entry.id);
                sink.epoch(&tag, n);
                self.tag = Some(tag);
                self.retire = Some(epoch.clone());
            }
            self.last_n = n.saturating_sub(1);
        }
        self.last_id.clone_from(&entry.id);
        if n > self.last_n + 1 {
            // Trimmed before this instance read them.
            sink.lost(n - 1);
        }
        self.last_n = n;
        true
    }
}

/// A stream id `MS-SEQ` as numbers, for comparing.
fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The entries of an XREAD reply for one stream.
fn entries(reply: Value) -> Vec<Entry> {
    // [[stream, [[id, fields], ...]]], or nil after the block time.
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    streams
        .into_iter()
        .filter_map(|s| match s {
            Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
            _ => None,
        })
        .flat_map(|list| match list {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
        .filter_map(|e| decode(&e))
        .collect()
}

/// Runs until the manager or the engine goes away.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut link: Link,
    sink: Arc<dyn Sink>,
    mut at: Position,
) {
    let block = shared.settings.block;
    let mut backoff = Duration::from_millis(50);
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let mut read = redis::cmd("XREAD");
        read.arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("COUNT")
            .arg(COUNT)
            .arg("STREAMS")
            .arg(&shared.keys.stream)
            .arg(&at.last_id);
        let reply = tokio::select! {
            r = tokio::time::timeout(block + Duration::from_secs(2), read.query_async::<Value>(&mut link)) => r,
            _ = shared.shutdown.cancelled() => return,
        };
        match reply {
            Ok(Ok(reply)) => {
                shared.set_up();
                backoff = Duration::from_millis(50);
                for entry in entries(reply) {
                    if at.take(&entry, &*sink) {
                        if let (Some(op), Some(n)) = (entry.op, entry.n) {
                            sink.apply(n, entry.origin, op);
                        }
                    }
                }
                if let Some(epoch) = at.retire.take() {
                    // Best effort: whichever instance does it first, the others find it done.
                    let _ = redis::Script::new(scripts::RETIRE)
                        .key(&shared.keys.meta)
                        .arg(&epoch)
                        .invoke_async::<Value>(&mut link)
                        .await;
                }
            }
            // An error, or no answer in time (a stalled connection): start over with a new
            // connection, after the last entry taken.
            Ok(Err(_)) | Err(_) => {
                shared.set_down();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                let Ok(fresh) = Link::open(&shared.servers, block + Duration::from_secs(2)).await
                else {
                    continue;
                };
                link = fresh;
                // The stream may have gone back (Redis restarted empty, or a failover to a
                // replica without the newest entries): read on from its newest entry, and
                // the numbers tell what happened.
                let newest: redis::RedisResult<Value> = redis::cmd("XREVRANGE")
                    .arg(&shared.keys.stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut link)
                    .await;
                let Ok(newest) = newest else {
                    continue;
                };
                let newest = match newest {
                    Value::Array(items) => items.first().and_then(decode).map(|e| e.id),
                    _ => None,
                };
                match newest {
                    None => at.last_id = "0-0".to_owned(),
                    Some(id) if stream_id(&id) < stream_id(&at.last_id) => at.last_id = id,
                    Some(_) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::broker::Op;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Sink for Recorder {
        fn epoch(&self, tag: &str, first: u64) {
            self.0.lock().unwrap().push(format!("epoch {tag} {first}"));
        }
        fn apply(&self, n: u64, _origin: u32, _op: Op) {
            self.0.lock().unwrap().push(format!("apply {n}"));
        }
        fn lost(&self, n: u64) {
            self.0.lock().unwrap().push(format!("lost through {n}"));
        }
    }

    fn entry(id: &str, epoch: &str, n: u64) -> Entry {
        Entry {
            id: id.to_owned(),
            epoch: Some(epoch.to_owned()),
            n: Some(n),
            origin: 1,
            op: None,
        }
    }

    #[test]
    fn holes_epochs_and_numbers_that_go_back_are_told_apart() {
        let sink = Recorder::default();
        let mut at = Position::new("0-0".into(), Some("a".into()), 4);
        let mut taken = Vec::new();
        for e in [
            entry("2-0", "a", 5),
            entry("3-0", "a", 8), // 6 and 7 were trimmed
            entry("4-0", "a", 7), // numbered again from 6: a failover lost the tail
            entry("5-0", "a", 8),
            entry("6-0", "b", 1), // Redis lost its data
            entry("7-0", "b", 2),
        ] {
            if at.take(&e, &sink) {
                taken.push(e.n.unwrap());
                sink.apply(
                    e.n.unwrap(),
                    1,
                    Op::Evict {
                        target: crate::manager::broker::Target::Key("k".into()),
                    },
                );
            }
        }
        assert_eq!(taken, [5, 8, 7, 8, 1, 2]);
        assert_eq!(
            *sink.0.lock().unwrap(),
            [
                "apply 5",
                "lost through 7",
                "apply 8",
                "epoch a.4-0 7",
                "apply 7",
                "apply 8",
                "epoch b 1",
                "apply 1",
                "apply 2"
            ]
        );
        assert_eq!(at.retire.as_deref(), Some("a"));
        assert_eq!(at.last_id, "7-0");
    }
}
