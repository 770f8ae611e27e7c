//! Production-grade [Server-Sent Events] for any [tower] server: axum, tonic, hyper, or your own.
//!
//! # Example
//!
//! ```
//! use tower_sse::Event;
//!
//! # fn main() -> Result<(), tower_sse::EventError> {
//! let event = Event::builder().event("greeting").id("1").data("hello\nworld").build()?;
//! assert_eq!(
//!     event.as_bytes(),
//!     &b"event: greeting\nid: 1\ndata: hello\ndata: world\n\n"[..]
//! );
//! # Ok(())
//! # }
//! ```
//!
//! [Server-Sent Events]: https://html.spec.whatwg.org/multipage/server-sent-events.html
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod event;

pub use event::{Event, EventBuilder, EventError, Field, KEEP_ALIVE};
