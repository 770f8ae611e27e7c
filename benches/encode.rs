//! Cost of encoding one event: tower-sse against axum 0.8's `sse::Event`, on the same inputs,
//! in the same run.
//!
//! Run with `cargo bench --bench encode --all-features` (the JSON case needs the `json`
//! feature; without it only the text cases run).
//!
//! # What is measured
//!
//! Each iteration starts from borrowed input (a `&str` or a `&Quote`) and ends with the event
//! dropped, so allocation and deallocation are included on both sides.
//!
//! - `tower-sse`: `Event::message(data)`, or `Event::builder().json_data(&v).build()`. The
//!   result holds the final wire bytes as frozen `Bytes`: nothing is left to do before
//!   writing it to any number of streams.
//! - `axum build`: `axum::response::sse::Event::default().data(data)` (or `.json_data(v)`).
//!   axum writes the fields into a `BytesMut` while building, but the terminating blank line
//!   and the freeze to `Bytes` happen in a private `Event::finalize` that runs only when
//!   axum's `Sse` body yields a frame. So this is a lower bound on axum's work: it omits one
//!   `put_u8(b'\n')` and one `freeze`, a few nanoseconds.
//! - `axum build + Sse frame`: the cheapest public way to get axum's bytes: wrap the event
//!   in `Sse::new(stream::iter([Ok(event)]))`, call `into_response()`, and poll one frame
//!   from the body (it is ready at once, so `now_or_never`). This is an upper bound: it adds
//!   a `Response` with two headers and a boxed body.
//! - `axum_sse_overhead/static event`: the same `Sse` path with `Event::DEFAULT_KEEP_ALIVE`,
//!   an already-finalized static event, so it is the response-and-frame overhead alone.
//!   "build + Sse frame" minus this is a fair estimate of axum's encoding cost alone.
//!
//! axum has no public `Event -> Bytes` path other than its `Sse` body: `finalize` is
//! private, and `KeepAlive::event` finalizes into a private field.

// `criterion_group!` generates a `pub fn` that cannot carry a doc comment.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use axum::response::sse::{Event as AxumEvent, Sse};
use axum::response::IntoResponse;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use futures_util::FutureExt as _;
use http_body_util::BodyExt as _;
use tower_sse::Event;

/// The bytes of an axum event, through the only public path: an `Sse` response body.
fn axum_bytes(event: AxumEvent) -> Bytes {
    let body = Sse::new(futures_util::stream::iter([Ok::<_, Infallible>(event)]))
        .into_response()
        .into_body();
    let mut body = body;
    let frame = body
        .frame()
        .now_or_never()
        .expect("an iter stream is always ready")
        .expect("one frame")
        .expect("infallible");
    frame.into_data().expect("a data frame")
}

/// 100 bytes, one line.
fn single_line() -> String {
    let s: String = "The quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(100)
        .collect();
    assert_eq!(s.len(), 100);
    s
}

/// 1 KiB of 60-byte lines (59 characters and an LF).
fn multi_line() -> String {
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit 00.\n";
    assert_eq!(line.len(), 60);
    let s: String = line.chars().cycle().take(1024).collect();
    assert_eq!(s.len(), 1024);
    s
}

fn text_case(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, data: &str) {
    // Both encoders must produce the same bytes, or the comparison means nothing.
    assert_eq!(
        Event::message(data).into_bytes(),
        axum_bytes(AxumEvent::default().data(data))
    );
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("tower-sse", |b| b.iter(|| Event::message(black_box(data))));
    group.bench_function("axum build", |b| {
        b.iter(|| AxumEvent::default().data(black_box(data)))
    });
    group.bench_function("axum build + Sse frame", |b| {
        b.iter(|| axum_bytes(AxumEvent::default().data(black_box(data))))
    });
}

fn encode_text(c: &mut Criterion) {
    let data = single_line();
    let mut group = c.benchmark_group("single_line_100B");
    text_case(&mut group, &data);
    group.finish();

    let data = multi_line();
    let mut group = c.benchmark_group("multi_line_1KiB");
    text_case(&mut group, &data);
    group.finish();
}

#[cfg(feature = "json")]
fn encode_json(c: &mut Criterion) {
    #[derive(serde::Serialize)]
    struct Quote {
        symbol: &'static str,
        bid: f64,
        ask: f64,
        volume: u64,
        seq: u64,
        live: bool,
        venue: &'static str,
    }
    let quote = Quote {
        symbol: "EUR/USD",
        bid: 1.084_215,
        ask: 1.084_298,
        volume: 12_500_000,
        seq: 987_654_321,
        live: true,
        venue: "MTF",
    };
    let json_len = serde_json::to_vec(&quote).unwrap().len();
    assert!((90..=110).contains(&json_len), "{json_len}");

    let ours = Event::builder().json_data(&quote).build().unwrap();
    let theirs = axum_bytes(AxumEvent::default().json_data(&quote).unwrap());
    assert_eq!(ours.into_bytes(), theirs);

    let mut group = c.benchmark_group("json_small_struct");
    group.throughput(Throughput::Bytes(json_len as u64));
    group.bench_function("tower-sse", |b| {
        b.iter(|| {
            Event::builder()
                .json_data(black_box(&quote))
                .build()
                .unwrap()
        })
    });
    group.bench_function("axum build", |b| {
        b.iter(|| AxumEvent::default().json_data(black_box(&quote)).unwrap())
    });
    group.bench_function("axum build + Sse frame", |b| {
        b.iter(|| axum_bytes(AxumEvent::default().json_data(black_box(&quote)).unwrap()))
    });
    group.finish();
}

#[cfg(not(feature = "json"))]
fn encode_json(_: &mut Criterion) {}

fn axum_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("axum_sse_overhead");
    group.bench_function("static event", |b| {
        b.iter(|| axum_bytes(black_box(AxumEvent::DEFAULT_KEEP_ALIVE)))
    });
    group.finish();
}

criterion_group!(benches, encode_text, encode_json, axum_overhead);
criterion_main!(benches);
