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
///
/// [`EventBuilder::id`](crate::EventBuilder::id) refuses longer ids, so every id this crate
/// sends is one [`LastEventId::parse`] accepts back.
pub const DEFAULT_MAX_LEN: usize = 256;

/// Why a value breaks [the id rule](check_id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdFault {
    /// Longer than the bound, in bytes.
    TooLong { len: usize, max: usize },
    /// A CR or LF.
    LineBreak,
    /// A NUL.
    Nul,
    /// Any other control character ([`char::is_control`]: U+0000–U+001F, U+007F–U+009F,
    /// so tab, 0x01, DEL and U+0085 too).
    Control,
}

/// The one rule for event ids, shared by the encoder and the `Last-Event-ID` parser, so that
/// an id the encoder accepts is always accepted back when a client reconnects with it: at
/// most `max_len` bytes, and no control character. Line breaks and NUL are told apart
/// because the encoder names them (they would also break the wire format itself).
pub(crate) fn check_id(id: &str, max_len: usize) -> Result<(), IdFault> {
    check_id_len(id.len(), max_len)?;
    let bytes = id.as_bytes();
    if memchr::memchr2(b'\n', b'\r', bytes).is_some() {
        return Err(IdFault::LineBreak);
    }
    if memchr::memchr(0, bytes).is_some() {
        return Err(IdFault::Nul);
    }
    if id.chars().any(char::is_control) {
        return Err(IdFault::Control);
    }
    Ok(())
}

/// The length half of [`check_id`], for raw header bytes checked before UTF-8 decoding.
fn check_id_len(len: usize, max: usize) -> Result<(), IdFault> {
    if len > max {
        return Err(IdFault::TooLong { len, max });
    }
    Ok(())
}

/// A validated `Last-Event-ID`: valid UTF-8, at most the allowed length, no control
/// characters. Safe to log, to compare, and to look up in a replay history.
///
/// With the [default bound](DEFAULT_MAX_LEN) this is the rule
/// [`EventBuilder::id`](crate::EventBuilder::id) applies: every id an event can carry parses
/// back, and no id that fails here can be sent.
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
        // Length first: an oversized header is refused before it is decoded.
        check_id_len(value.len(), max_len).map_err(InvalidLastEventId::from)?;
        let value = std::str::from_utf8(value).map_err(|_| InvalidLastEventId::NotUtf8)?;
        check_id(value, max_len).map_err(InvalidLastEventId::from)?;
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
    /// Contains a control character ([`char::is_control`]: CR, LF, NUL, tab, DEL, U+0085 and
    /// the rest of U+0000–U+001F and U+007F–U+009F), which no id this crate sends can hold.
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

impl From<IdFault> for InvalidLastEventId {
    fn from(fault: IdFault) -> Self {
        match fault {
            IdFault::TooLong { len, max } => InvalidLastEventId::TooLong { len, max },
            IdFault::LineBreak | IdFault::Nul | IdFault::Control => {
                InvalidLastEventId::ControlCharacter
            }
        }
    }
}

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
