//! The `Last-Event-ID` a reconnecting client sends, validated before anyone uses it.
//!
//! # Example
//!
//! ```
//! use http::HeaderMap;
//! use tower_sse::{InvalidLastEventId, LastEventId};
//!
//! let mut headers = HeaderMap::new();
//! assert_eq!(LastEventId::from_headers(&headers), Ok(None));
//!
//! headers.insert("last-event-id", "41".parse().unwrap());
//! let id = LastEventId::from_headers(&headers).unwrap().unwrap();
//! assert_eq!(id.as_str(), "41");
//!
//! // The header is untrusted input: a control character or an oversized value is refused.
//! headers.insert("last-event-id", "x".repeat(1000).parse().unwrap());
//! assert!(matches!(
//!     LastEventId::from_headers(&headers),
//!     Err(InvalidLastEventId::TooLong { .. })
//! ));
//! ```
//!
//! Browsers send the header only when the id is non-empty ([WHATWG §9.2.3]); an empty value is
//! treated as absent.
//!
//! [WHATWG §9.2.3]: https://html.spec.whatwg.org/multipage/server-sent-events.html#sse-processing-model

use std::fmt;

use http::HeaderMap;

/// The header's name, `last-event-id`.
pub const LAST_EVENT_ID: http::HeaderName = http::HeaderName::from_static("last-event-id");

/// The longest id accepted by default, in bytes.
pub const DEFAULT_MAX_LEN: usize = 256;

/// A validated `Last-Event-ID`: valid UTF-8, at most the allowed length, no control
/// characters. Safe to log, to compare, and to look up in a replay history.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LastEventId(Box<str>);

impl LastEventId {
    /// Validates `value` with the [default length limit](DEFAULT_MAX_LEN).
    ///
    /// Returns `Ok(None)` for an empty value, which means "no id".
    ///
    /// # Errors
    ///
    /// See [`InvalidLastEventId`].
    pub fn parse(value: &str) -> Result<Option<LastEventId>, InvalidLastEventId> {
        Self::parse_with_max_len(value.as_bytes(), DEFAULT_MAX_LEN)
    }

    /// Validates raw header bytes, refusing values longer than `max_len` bytes.
    ///
    /// # Errors
    ///
    /// See [`InvalidLastEventId`].
    pub fn parse_with_max_len(
        value: &[u8],
        max_len: usize,
    ) -> Result<Option<LastEventId>, InvalidLastEventId> {
        if value.len() > max_len {
            return Err(InvalidLastEventId::TooLong {
                len: value.len(),
                max: max_len,
            });
        }
        let value = std::str::from_utf8(value).map_err(|_| InvalidLastEventId::NotUtf8)?;
        if value.chars().any(char::is_control) {
            return Err(InvalidLastEventId::ControlCharacter);
        }
        if value.is_empty() {
            return Ok(None);
        }
        Ok(Some(LastEventId(value.into())))
    }

    /// Reads and validates the `Last-Event-ID` header with the default length limit.
    ///
    /// # Errors
    ///
    /// See [`InvalidLastEventId`]. Several `Last-Event-ID` headers are refused as
    /// [`InvalidLastEventId::Repeated`].
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<LastEventId>, InvalidLastEventId> {
        Self::from_headers_with_max_len(headers, DEFAULT_MAX_LEN)
    }

    /// Reads and validates the `Last-Event-ID` header, refusing values longer than `max_len`.
    ///
    /// # Errors
    ///
    /// See [`InvalidLastEventId`].
    pub fn from_headers_with_max_len(
        headers: &HeaderMap,
        max_len: usize,
    ) -> Result<Option<LastEventId>, InvalidLastEventId> {
        let mut values = headers.get_all(LAST_EVENT_ID).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(InvalidLastEventId::Repeated);
        }
        Self::parse_with_max_len(value.as_bytes(), max_len)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LastEventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for LastEventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for LastEventId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a `Last-Event-ID` was refused. The offending value is never echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidLastEventId {
    /// Longer than allowed.
    TooLong {
        /// Length received, in bytes.
        len: usize,
        /// Longest allowed, in bytes.
        max: usize,
    },
    /// Not valid UTF-8.
    NotUtf8,
    /// Contains a control character (such as CR, LF or NUL), which no id we sent can hold.
    ControlCharacter,
    /// The header appeared more than once.
    Repeated,
}

impl fmt::Display for InvalidLastEventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidLastEventId::TooLong { len, max } => {
                write!(
                    f,
                    "Last-Event-ID is {len} bytes long, more than the {max} allowed"
                )
            }
            InvalidLastEventId::NotUtf8 => f.write_str("Last-Event-ID is not valid UTF-8"),
            InvalidLastEventId::ControlCharacter => {
                f.write_str("Last-Event-ID contains a control character")
            }
            InvalidLastEventId::Repeated => f.write_str("Last-Event-ID header sent more than once"),
        }
    }
}

impl std::error::Error for InvalidLastEventId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(LastEventId::parse(""), Ok(None));
        assert_eq!(LastEventId::parse("abc").unwrap().unwrap().as_str(), "abc");
        assert_eq!(
            LastEventId::parse("a\u{0}b"),
            Err(InvalidLastEventId::ControlCharacter)
        );
        assert_eq!(
            LastEventId::parse("a\rb"),
            Err(InvalidLastEventId::ControlCharacter)
        );
        assert_eq!(
            LastEventId::parse_with_max_len(b"\xff", 10),
            Err(InvalidLastEventId::NotUtf8)
        );
        assert_eq!(
            LastEventId::parse_with_max_len(b"12345", 4),
            Err(InvalidLastEventId::TooLong { len: 5, max: 4 })
        );
        assert!(LastEventId::parse_with_max_len(b"1234", 4).is_ok());
        assert_eq!(LastEventId::parse("é😀").unwrap().unwrap().as_str(), "é😀");
    }

    #[test]
    fn repeated_header_refused() {
        let mut h = HeaderMap::new();
        h.append(LAST_EVENT_ID, "1".parse().unwrap());
        h.append(LAST_EVENT_ID, "2".parse().unwrap());
        assert_eq!(
            LastEventId::from_headers(&h),
            Err(InvalidLastEventId::Repeated)
        );
    }
}
