//! The writer: appends this instance's operations to the hub's stream, in the order they
//! were sent, many per round trip.

use std::sync::Arc;

use redis::Value;
use tokio::sync::mpsc;

use super::codec::Fields;
use super::link::Link;
use super::scripts;
use super::Shared;
use crate::manager::broker::{format_id, Ack, BackplaneError};

/// Most operations in one append.
const BATCH: usize = 256;

/// An append stops taking more operations once it carries this many bytes of data.
const BATCH_BYTES: usize = 1 << 20;

/// One operation on its way to Redis.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) fields: Fields,
    pub(super) ack: Option<Ack>,
}

fn fail(batch: Vec<Outgoing>, error: BackplaneError) {
    for o in batch {
        if let Some(ack) = o.ack {
            let _ = ack.send(Err(error));
        }
    }
}

/// Runs until every sender is gone or the engine shuts down.
pub(super) async fn run(shared: Arc<Shared>, mut link: Link, mut rx: mpsc::Receiver<Outgoing>) {
    let mut sha = shared.append_sha.clone();
    loop {
        let first = tokio::select! {
            next = rx.recv() => next,
            _ = shared.shutdown.cancelled() => None,
        };
        let Some(first) = first else {
            return;
        };
        let mut bytes = first.fields.data.len();
        let mut batch = vec![first];
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(o) => {
                    bytes += o.fields.data.len();
                    batch.push(o);
                }
                Err(_) => break,
            }
        }
        if !shared.is_up() {
            fail(batch, BackplaneError::Unavailable);
            continue;
        }
        let mut result = append(&shared, &mut link, &sha, &batch).await;
        if result
            .as_ref()
            .is_err_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            // Redis restarted and forgot the script: no command of the batch ran.
            match redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(scripts::APPEND)
                .query_async::<String>(&mut link)
                .await
            {
                Ok(loaded) => {
                    sha = loaded;
                    result = append(&shared, &mut link, &sha, &batch).await;
                }
                Err(e) => result = Err(e),
            }
        }
        match result {
            Ok(reply) => {
                let numbered = parse_reply(&reply, batch.len());
                for (i, o) in batch.into_iter().enumerate() {
                    if let Some(ack) = o.ack {
                        let id = numbered
                            .as_ref()
                            .map(|(epoch, first)| format_id(epoch, first + i as u64));
                        let _ = ack.send(id.ok_or(BackplaneError::Unconfirmed));
                    }
                }
            }
            Err(_) => {
                shared.set_down();
                fail(batch, BackplaneError::Unconfirmed);
            }
        }
    }
}

async fn append(
    shared: &Shared,
    link: &mut Link,
    sha: &str,
    batch: &[Outgoing],
) -> redis::RedisResult<Value> {
    let s = &shared.settings;
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha)
        .arg(2)
        .arg(&shared.keys.stream)
        .arg(&shared.keys.meta)
        .arg(&shared.epoch_candidate)
        .arg(s.max_len)
        .arg(s.max_age_ms)
        .arg(shared.instance);
    for o in batch {
        let f = &o.fields;
        cmd.arg(f.kind)
            .arg(&f.target)
            .arg(&f.data[..])
            .arg(f.completion);
    }
    cmd.query_async(link).await
}

/// The epoch and the number of the first of `count` operations from the script's
/// `{epoch, last}`.
fn parse_reply(reply: &Value, count: usize) -> Option<(String, u64)> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let [epoch, Value::Int(last)] = parts.as_slice() else {
        return None;
    };
    let epoch = match epoch {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.to_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let first = u64::try_from(*last).ok()?.checked_sub(count as u64)? + 1;
    Some((epoch, first))
}
