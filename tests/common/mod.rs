//! Helpers shared by the integration tests. Use with `mod common;`.
//!
//! - [`redis`]: a `redis-server` per test, on a free loopback port.
//! - [`whatwg`]: an independent event stream decoder written from the WHATWG spec, to check
//!   that what the crate writes decodes to what was meant.
//!
//! Each test binary compiles this module on its own and uses only part of it, hence the
//! `allow`s: unused helpers must not fail `clippy -D warnings`, and `pub` items here are
//! deliberately unreachable from the test crate's root.
#![allow(dead_code, unreachable_pub)]

pub mod redis;
pub mod whatwg;
