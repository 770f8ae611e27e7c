//! How an operation is written into a stream entry, and read back.
//!
//! Fields: `e` epoch and `n` number (both set by the append script), `k` kind, `t` target,
//! `d` data (an encoded event, or a topic), `c` completion kind, `o` origin instance.

use std::sync::Arc;

use bytes::Bytes;
use redis::Value;

use crate::manager::broker::{Op, Target};
use crate::manager::{Completion, ConnectionId};
use crate::Event;

/// The fields of an operation, in the append script's argument order: kind, target, data,
/// completion kind.
#[derive(Debug, Clone)]
pub(super) struct Fields {
    pub(super) kind: &'static str,
    pub(super) target: String,
    pub(super) data: Bytes,
    pub(super) completion: &'static str,
}

fn target(t: &Target) -> String {
    match t {
        Target::Key(k) => format!("k:{k}"),
        Target::Topic(t) => format!("t:{t}"),
        Target::Conn(id) => format!("c:{}:{}", id.instance(), id.as_u64()),
    }
}

fn parse_target(s: &str) -> Option<Target> {
    let (kind, rest) = s.split_once(':')?;
    match kind {
        "k" => Some(Target::Key(rest.into())),
        "t" => Some(Target::Topic(rest.into())),
        "c" => {
            let (instance, seq) = rest.split_once(':')?;
            Some(Target::Conn(ConnectionId::new(
                instance.parse().ok()?,
                seq.parse().ok()?,
            )))
        }
        _ => None,
    }
}

pub(super) fn encode(op: &Op) -> Fields {
    let fields = |kind, target: String, data: Bytes, completion| Fields {
        kind,
        target,
        data,
        completion,
    };
    match op {
        Op::Publish { topic: None, event } => {
            fields("P", String::new(), event.as_bytes().clone(), "")
        }
        Op::Publish {
            topic: Some(topic),
            event,
        } => fields("T", topic.to_string(), event.as_bytes().clone(), ""),
        Op::Send { target: t, event } => fields("S", target(t), event.as_bytes().clone(), ""),
        Op::Complete {
            target: t,
            completion,
        } => {
            let data = completion
                .last
                .as_ref()
                .map_or_else(Bytes::new, |e| e.as_bytes().clone());
            let kind = match (completion.close_reason(), completion.finished) {
                (crate::CloseReason::CompletedWithError, _) => "err",
                (_, true) => "fin",
                _ => "ok",
            };
            fields("C", target(t), data, kind)
        }
        Op::Evict { target: t } => fields("E", target(t), Bytes::new(), ""),
        Op::Subscribe { key, topic } => fields(
            "+",
            key.to_string(),
            Bytes::copy_from_slice(topic.as_bytes()),
            "",
        ),
        Op::Unsubscribe { key, topic } => fields(
            "-",
            key.to_string(),
            Bytes::copy_from_slice(topic.as_bytes()),
            "",
        ),
    }
}

/// One entry as read: its stream id, epoch, number, origin and operation (`None` if the
/// entry is not one of ours, or malformed).
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) epoch: Option<String>,
    pub(super) n: Option<u64>,
    pub(super) origin: u32,
    pub(super) op: Option<Op>,
}

impl Entry {
    pub(super) fn is_publish(&self) -> bool {
        matches!(self.op, Some(Op::Publish { .. }))
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::copy_from_slice(b)),
        Value::SimpleString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    }
}

/// Reads one `[id, [field, value, ...]]` pair of an XREAD or XRANGE reply.
pub(super) fn decode(entry: &Value) -> Option<Entry> {
    let Value::Array(pair) = entry else {
        return None;
    };
    let [id, Value::Array(kv)] = pair.as_slice() else {
        return None;
    };
    let id = text(id)?;
    let get = |name: &str| -> Option<&Value> {
        kv.chunks_exact(2)
            .find(|f| text(&f[0]).as_deref() == Some(name))
            .map(|f| &f[1])
    };
    let epoch = get("e").and_then(text);
    let n = get("n").and_then(text).and_then(|n| n.parse().ok());
    let origin = get("o")
        .and_then(text)
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let kind = get("k").and_then(text);
    let target = get("t").and_then(text).unwrap_or_default();
    let data = get("d").and_then(bytes).unwrap_or_default();
    let completion = get("c").and_then(text).unwrap_or_default();
    let op = kind.and_then(|k| op(&k, &target, data, &completion));
    Some(Entry {
        id,
        epoch,
        n,
        origin,
        op,
    })
}

fn op(kind: &str, target: &str, data: Bytes, completion: &str) -> Option<Op> {
    let event = || Event::from_encoded(data.clone());
    Some(match kind {
        "P" => Op::Publish {
            topic: None,
            event: event()?,
        },
        "T" => Op::Publish {
            topic: Some(Arc::from(target)),
            event: event()?,
        },
        "S" => Op::Send {
            target: parse_target(target)?,
            event: event()?,
        },
        "C" => {
            let last = if data.is_empty() {
                None
            } else {
                Some(event()?)
            };
            let completion = match (completion, last) {
                ("err", Some(e)) => Completion::error(e),
                ("fin", Some(e)) => Completion::finish(e),
                (_, last) => Completion::from(last),
            };
            Op::Complete {
                target: parse_target(target)?,
                completion,
            }
        }
        "E" => Op::Evict {
            target: parse_target(target)?,
        },
        "+" | "-" => {
            let (key, topic) = (
                Arc::from(target),
                Arc::from(std::str::from_utf8(&data).ok()?),
            );
            if kind == "+" {
                Op::Subscribe { key, topic }
            } else {
                Op::Unsubscribe { key, topic }
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_entry(id: &str, fields: &Fields, epoch: &str, n: u64) -> Value {
        let b = |s: &[u8]| Value::BulkString(s.to_vec());
        Value::Array(vec![
            b(id.as_bytes()),
            Value::Array(vec![
                b(b"e"),
                b(epoch.as_bytes()),
                b(b"n"),
                b(n.to_string().as_bytes()),
                b(b"k"),
                b(fields.kind.as_bytes()),
                b(b"t"),
                b(fields.target.as_bytes()),
                b(b"d"),
                b(&fields.data),
                b(b"c"),
                b(fields.completion.as_bytes()),
                b(b"o"),
                b(b"7"),
            ]),
        ])
    }

    #[test]
    fn every_operation_round_trips() {
        let ev = Event::message("a\nb");
        let ops = [
            Op::Publish {
                topic: None,
                event: ev.clone(),
            },
            Op::Publish {
                topic: Some("prices".into()),
                event: ev.clone(),
            },
            Op::Send {
                target: Target::Key("user:7".into()),
                event: ev.clone(),
            },
            Op::Send {
                target: Target::Conn(ConnectionId::new(9, 42)),
                event: ev.clone(),
            },
            Op::Complete {
                target: Target::Topic("t".into()),
                completion: Completion::error(ev.clone()),
            },
            Op::Complete {
                target: Target::Key("k".into()),
                completion: Completion::new(),
            },
            Op::Complete {
                target: Target::Conn(ConnectionId::new(3, 4)),
                completion: Completion::finish(ev.clone()),
            },
            Op::Evict {
                target: Target::Key("k".into()),
            },
            Op::Subscribe {
                key: "k".into(),
                topic: "room:1".into(),
            },
            Op::Unsubscribe {
                key: "k".into(),
                topic: "room:1".into(),
            },
        ];
        for (i, op) in ops.iter().enumerate() {
            let fields = encode(op);
            let entry = decode(&as_entry("1-0", &fields, "ep", i as u64 + 1)).unwrap();
            assert_eq!(
                (entry.epoch.as_deref(), entry.n),
                (Some("ep"), Some(i as u64 + 1))
            );
            assert_eq!(entry.origin, 7);
            assert_eq!(
                format!("{:?}", entry.op.unwrap()),
                format!("{op:?}"),
                "op {i}"
            );
        }
    }

    #[test]
    fn malformed_entries_have_no_operation() {
        let fields = Fields {
            kind: "P",
            target: String::new(),
            data: Bytes::from_static(b"data: not ended"),
            completion: "",
        };
        let entry = decode(&as_entry("1-0", &fields, "ep", 1)).unwrap();
        assert!(entry.op.is_none());
        assert_eq!(entry.n, Some(1), "still counted, so no hole is seen");
        assert!(decode(&Value::Nil).is_none());
    }
}
