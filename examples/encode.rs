//! Prints an encoded event stream to stdout.
//!
//! Run with `cargo run --example encode`.
use std::time::Duration;

use tower_sse::Event;

fn main() -> Result<(), tower_sse::EventError> {
    let events = [
        Event::builder().retry(Duration::from_secs(2)).build()?,
        Event::message("hello"),
        Event::builder()
            .event("multi")
            .id("2")
            .data("line one\r\nline two\rline three\n")
            .build()?,
        Event::comment("a comment\nin two lines"),
        tower_sse::KEEP_ALIVE,
    ];
    for event in &events {
        print!("{}", String::from_utf8_lossy(event.as_bytes()));
    }
    Ok(())
}
