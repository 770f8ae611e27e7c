//! A client for response bodies in process: a task reads the body frame by frame, decodes it
//! with the independent [`whatwg`](super::whatwg) decoder, and records what a browser would
//! have been handed. Tests wait on it with [`eventually`], which is bounded in time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;

use super::whatwg::{Decoded, Decoder};

/// The heartbeat line `SseLayer` writes between events.
pub const HEARTBEAT: &[u8] = b":\n";

/// How a body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The body ended cleanly.
    Clean,
    /// The body returned an error (a slow consumer's abort, for example).
    Error(String),
}

#[derive(Debug, Default)]
struct State {
    events: Vec<Decoded>,
    heartbeats: usize,
    ended: Option<Ended>,
}

/// What one reader has received so far. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Received {
    state: Arc<Mutex<State>>,
}

impl Received {
    /// Every event dispatched so far, in order.
    pub fn events(&self) -> Vec<Decoded> {
        self.state.lock().unwrap().events.clone()
    }

    /// `(last event id, type)` of every event so far, as the sequence checker takes them.
    pub fn ids(&self) -> Vec<(String, String)> {
        self.state
            .lock()
            .unwrap()
            .events
            .iter()
            .map(|e| (e.last_event_id.clone(), e.event_type.clone()))
            .collect()
    }

    /// The data of every event of type `event_type`, in order.
    pub fn data_of(&self, event_type: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| e.event_type == event_type)
            .map(|e| e.data.clone())
            .collect()
    }

    /// Heartbeat frames received so far.
    pub fn heartbeats(&self) -> usize {
        self.state.lock().unwrap().heartbeats
    }

    /// How the body ended, if it has.
    pub fn ended(&self) -> Option<Ended> {
        self.state.lock().unwrap().ended.clone()
    }

    /// Whether an event with this data has arrived.
    pub fn has_data(&self, data: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .events
            .iter()
            .any(|e| e.data == data)
    }
}

/// Reads `body` on a task until it ends or the returned handle is aborted (dropping the
/// body, as a server does when its client goes away).
pub fn read<B>(body: B) -> (Received, tokio::task::JoinHandle<()>)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    let received = Received::default();
    let state = received.state.clone();
    let task = tokio::spawn(async move {
        let mut body = Box::pin(body);
        let mut decoder = Decoder::new();
        loop {
            match body.frame().await {
                None => {
                    state.lock().unwrap().ended = Some(Ended::Clean);
                    return;
                }
                Some(Err(e)) => {
                    state.lock().unwrap().ended = Some(Ended::Error(e.to_string()));
                    return;
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let mut s = state.lock().unwrap();
                    if &data[..] == HEARTBEAT {
                        s.heartbeats += 1;
                    }
                    decoder.feed(&data);
                    s.events.extend(decoder.take_events());
                }
            }
        }
    });
    (received, task)
}

/// Waits until `cond` holds, checking every 10 ms, for at most `limit`; panics naming `what`
/// if it does not.
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
