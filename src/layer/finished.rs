//! Finished streams: an id prefix that marks a stream's last event, so that a reconnect
//! carrying it as `Last-Event-ID` gets `204 No Content`, which tells a spec-following client
//! to stop ([WHATWG §9.2.3]). No server-side state is needed.
//!
//! [WHATWG §9.2.3]: https://html.spec.whatwg.org/multipage/server-sent-events.html#sse-processing-model

use std::borrow::Cow;
use std::fmt;

use http::header::ACCEPT;
use http::HeaderMap;

/// The id prefix [`SseLayer`](super::SseLayer) recognises by default: `tower-sse:finished:`.
///
/// Readable on the wire, and unlikely to begin an application's own ids.
pub const DEFAULT_FINISHED_PREFIX: &FinishedPrefix =
    &FinishedPrefix(Cow::Borrowed("tower-sse:finished:"));

/// Longest prefix accepted, in bytes: it travels in every finished stream's last id.
const MAX_LEN: usize = 64;

/// A validated id prefix that marks a stream as finished.
///
/// [`Event::finishing`](crate::Event::finishing) puts it in front of an event's id (or makes
/// it the id); [`SseLayer`](super::SseLayer) answers a reconnect whose `Last-Event-ID` starts
/// with it with `204 No Content`, without calling the inner service.
///
/// ```
/// use tower_sse::{FinishedPrefix, SseLayer};
///
/// # fn main() -> Result<(), tower_sse::InvalidFinishedPrefix> {
/// let prefix = FinishedPrefix::new("done.")?;
/// let layer = SseLayer::new().finished_prefix(prefix);
/// # let _ = layer;
/// assert!(FinishedPrefix::new("").is_err());
/// assert!(FinishedPrefix::new("a\nb").is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FinishedPrefix(Cow<'static, str>);

impl FinishedPrefix {
    /// Validates `prefix`.
    ///
    /// # Errors
    ///
    /// [`InvalidFinishedPrefix`] if it is empty, longer than 64 bytes, starts with whitespace
    /// (header parsing would strip it from the `Last-Event-ID` that comes back) or contains a
    /// control character (CR, LF, NUL, tab...: an id cannot carry it, or the `Last-Event-ID`
    /// validation refuses it).
    pub fn new(prefix: impl Into<Cow<'static, str>>) -> Result<Self, InvalidFinishedPrefix> {
        let prefix = prefix.into();
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_LEN
            && !prefix.starts_with(char::is_whitespace)
            && !prefix.chars().any(char::is_control);
        if valid {
            Ok(FinishedPrefix(prefix))
        } else {
            Err(InvalidFinishedPrefix(()))
        }
    }

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `id` marks a finished stream.
    pub fn marks(&self, id: &str) -> bool {
        id.starts_with(self.as_str())
    }
}

impl Default for FinishedPrefix {
    fn default() -> Self {
        DEFAULT_FINISHED_PREFIX.clone()
    }
}

impl fmt::Debug for FinishedPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for FinishedPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for FinishedPrefix {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Refusal of [`FinishedPrefix::new`]: empty, longer than 64 bytes, starting with whitespace,
/// or holding a control character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidFinishedPrefix(());

impl fmt::Display for InvalidFinishedPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a finished-stream id prefix must be 1 to 64 bytes, with no control character \
             and no leading whitespace",
        )
    }
}

impl std::error::Error for InvalidFinishedPrefix {}

/// Whether the request asks for an event stream: an `Accept` header that lists
/// `text/event-stream` (case and parameters aside). Browsers' `EventSource` and every client
/// the compatibility suite drives send it; a plain `fetch` or form post to another route does
/// not, so a stray `Last-Event-ID` there is left alone.
pub(crate) fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT).iter().any(|value| {
        value.as_bytes().split(|&b| b == b',').any(|range| {
            let essence = range.split(|&b| b == b';').next().unwrap_or_default();
            essence
                .trim_ascii()
                .eq_ignore_ascii_case(b"text/event-stream")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn validation() {
        assert_eq!(
            FinishedPrefix::new("tower-sse:finished:").unwrap(),
            *DEFAULT_FINISHED_PREFIX
        );
        assert_eq!(FinishedPrefix::default(), *DEFAULT_FINISHED_PREFIX);
        for bad in [
            "",
            " x",
            "\tx",
            "a\rb",
            "a\nb",
            "a\0b",
            "a\tb",
            &"x".repeat(65),
        ] {
            assert!(FinishedPrefix::new(bad.to_owned()).is_err(), "{bad:?}");
        }
        assert!(FinishedPrefix::new("x".repeat(64)).is_ok());
        assert!(FinishedPrefix::new("fin é ✓").is_ok());
        let p = FinishedPrefix::new("done.").unwrap();
        assert!(p.marks("done."));
        assert!(p.marks("done.42"));
        assert!(!p.marks("done"));
        assert!(!p.marks("42done."));
    }

    #[test]
    fn accept_detection() {
        let mut h = HeaderMap::new();
        assert!(!accepts_event_stream(&h));
        for (v, expect) in [
            ("text/event-stream", true),
            ("Text/Event-Stream", true),
            ("application/json, text/event-stream;q=0.9", true),
            ("text/event-streams", false),
            ("*/*", false),
            ("application/json", false),
        ] {
            h.insert(ACCEPT, HeaderValue::from_static(v));
            assert_eq!(accepts_event_stream(&h), expect, "{v}");
        }
        h.insert(ACCEPT, HeaderValue::from_static("text/html"));
        h.append(ACCEPT, HeaderValue::from_static("text/event-stream"));
        assert!(accepts_event_stream(&h));
    }
}
