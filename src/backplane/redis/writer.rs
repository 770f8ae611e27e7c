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

/// Most operations in one pipeline.
const BATCH: usize = 256;

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
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
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
            Ok(replies) => {
                for (o, reply) in batch.into_iter().zip(replies) {
                    if let Some(ack) = o.ack {
                        let _ = ack.send(parse_reply(&reply).ok_or(BackplaneError::Unconfirmed));
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
) -> redis::RedisResult<Vec<Value>> {
    let mut pipe = redis::pipe();
    let s = &shared.settings;
    for o in batch {
        let f = &o.fields;
        pipe.cmd("EVALSHA")
            .arg(sha)
            .arg(2)
            .arg(&shared.keys.stream)
            .arg(&shared.keys.meta)
            .arg(&shared.epoch_candidate)
            .arg(s.max_len)
            .arg(s.max_age_ms)
            .arg(f.kind)
            .arg(&f.target)
            .arg(&f.data[..])
            .arg(f.completion)
            .arg(shared.instance);
    }
    pipe.query_async(link).await
}

/// `{epoch, n}` as the id of entry `n`.
fn parse_reply(reply: &Value) -> Option<String> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let [epoch, Value::Int(n)] = parts.as_slice() else {
        return None;
    };
    let epoch = match epoch {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.to_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    Some(format_id(&epoch, u64::try_from(*n).ok()?))
}
