//! Helpers shared by the integration tests. Use with `mod common;`.
//!
//! - [`chromium`]: headless Chromium for the browser tests.
//! - [`redis`]: a `redis-server` per test on a free loopback port, a three-node Redis
//!   Cluster, and a TCP proxy that can stall, cut and redirect connections.
//! - [`sequence`]: the checker over the ids a client received through a backplane.
//! - [`sse`]: a client that reads a response body in process and decodes it.
//! - [`wait`]: polling a condition until a deadline.
//! - [`whatwg`]: an independent event stream decoder written from the WHATWG spec, to check
//!   that what the crate writes decodes to what was meant.
//!
//! Each test binary compiles this module on its own and uses only part of it, hence the
//! `allow`s: unused helpers must not fail `clippy -D warnings`, and `pub` items here are
//! deliberately unreachable from the test crate's root.
#![allow(dead_code, unreachable_pub)]

pub mod chromium;
pub mod proxy;
pub mod redis;
pub mod sequence;
pub mod sse;
pub mod wait;
pub mod whatwg;
