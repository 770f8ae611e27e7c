//! One Server-Sent Event, encoded once into the exact bytes a spec-following client decodes.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_sse::{Event, EventType};
//!
//! # fn main() -> Result<(), tower_sse::EventError> {
//! // The common case cannot fail: any text is valid data.
//! let hello = Event::message("hello\nworld");
//! assert_eq!(hello.as_bytes(), &b"data: hello\ndata: world\n\n"[..]);
//!
//! // Every other field goes through the builder, which checks its input once, in `build`.
//! let update = Event::builder()
//!     .event("price")
//!     .id("42")
//!     .retry(Duration::from_secs(3))
//!     .data("EUR 1.0842")
//!     .build()?;
//! assert_eq!(
//!     update.as_bytes(),
//!     &b"event: price\nid: 42\nretry: 3000\ndata: EUR 1.0842\n\n"[..]
//! );
//!
//! // A constant event type is checked at compile time, so a named event cannot fail.
//! const TICK: EventType = EventType::from_static("tick");
//! let tick = Event::named(TICK, "1");
//! assert_eq!(tick.as_bytes(), &b"event: tick\ndata: 1\n\n"[..]);
//!
//! // Input the wire format cannot carry is a typed error, never a panic.
//! let err = Event::builder().id("4\n2").data("x").build().unwrap_err();
//! assert_eq!(err.field(), Some(tower_sse::Field::Id));
//! # Ok(())
//! # }
//! ```
//!
//! # What the encoding guarantees
//!
//! The bytes follow the [WHATWG event stream format]: a client that follows the spec decodes
//! exactly the data, type, id and retry that were given, with one exception that the format
//! itself imposes: **every line terminator in data comes back as LF**. SSE splits data on CR,
//! LF and CRLF and joins the lines with LF, so a CR cannot be carried. This encoder splits
//! on the same three terminators (CRLF counts once), writes each line as its own `data: `
//! line with the single space the client strips, and keeps a trailing newline by writing an
//! empty last `data: ` line.
//!
//! [WHATWG event stream format]: https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream

use std::fmt;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::last_event_id::{check_id, IdFault, DEFAULT_MAX_LEN};

/// One encoded event, ready to be written to any number of streams.
///
/// Cloning an `Event` clones a reference-counted [`Bytes`], never the payload, so one event
/// sent to ten thousand streams is encoded once. Build one with [`Event::message`],
/// [`Event::comment`] or [`Event::builder`]; see the [module example](crate::event).
///
/// # Events without data
///
/// An event without a `data` field (a comment, an id-only or a retry-only event, such as
/// [`KEEP_ALIVE`]) is not dispatched by the spec's algorithm, but it is still a block that
/// ends with a blank line, and some popular clients hand the application an empty message for
/// it (`@microsoft/fetch-event-source` for every such block, `httpx-sse` and OpenAI's Python
/// SDK once an id or retry was seen), while others lose an id sent that way (npm
/// `eventsource` 4). Put `id` and `retry` on events that carry data; for heartbeats use
/// [`SseLayer`](crate::SseLayer)'s default, a comment line with no blank line after it. The
/// README's "Client compatibility" table has the measurements.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    bytes: Bytes,
    /// Where the value of the `id` field sits inside `bytes`, if the event has one.
    id: Option<(u32, u32)>,
}

/// A bare comment line and a blank line: the smallest keep-alive frame (`:\n\n`).
///
/// Clients ignore it; proxies see traffic. This is a constant: using it allocates nothing.
pub const KEEP_ALIVE: Event = Event {
    bytes: Bytes::from_static(b":\n\n"),
    id: None,
};

impl Event {
    /// An event of type `message` whose data is `data`. Cannot fail: any text is valid data.
    ///
    /// Line terminators (CR, LF, CRLF) split the text into several `data: ` lines; the client
    /// joins them with LF.
    ///
    /// ```
    /// let event = tower_sse::Event::message("a\r\nb");
    /// assert_eq!(event.as_bytes(), &b"data: a\ndata: b\n\n"[..]);
    /// ```
    pub fn message(data: impl AsRef<str>) -> Event {
        let data = data.as_ref().as_bytes();
        let mut buf = BytesMut::with_capacity(data.len() + 8);
        write_data(&mut buf, data);
        buf.put_u8(b'\n');
        Event {
            bytes: buf.freeze(),
            id: None,
        }
    }

    /// A comment: clients ignore it, proxies see traffic. Multi-line text becomes several
    /// comment lines, so no line of it can be read as a field.
    ///
    /// ```
    /// let ping = tower_sse::Event::comment("ping");
    /// assert_eq!(ping.as_bytes(), &b": ping\n\n"[..]);
    /// ```
    pub fn comment(text: impl AsRef<str>) -> Event {
        let text = text.as_ref().as_bytes();
        let mut buf = BytesMut::with_capacity(text.len() + 4);
        write_comment(&mut buf, text);
        buf.put_u8(b'\n');
        Event {
            bytes: buf.freeze(),
            id: None,
        }
    }

    /// An event of type `event_type` whose data is `data`. Cannot fail: the type was checked
    /// when the [`EventType`] was made, and any text is valid data.
    ///
    /// ```
    /// use tower_sse::{Event, EventType};
    ///
    /// const PRICE: EventType = EventType::from_static("price");
    /// let event = Event::named(PRICE, "1.5");
    /// assert_eq!(event.as_bytes(), &b"event: price\ndata: 1.5\n\n"[..]);
    /// ```
    pub fn named(event_type: EventType, data: impl AsRef<str>) -> Event {
        let name = event_type.as_str().as_bytes();
        let data = data.as_ref().as_bytes();
        let mut buf = BytesMut::with_capacity(name.len() + data.len() + 16);
        write_field(&mut buf, b"event: ", name);
        write_data(&mut buf, data);
        buf.put_u8(b'\n');
        Event {
            bytes: buf.freeze(),
            id: None,
        }
    }

    /// Starts an event with any of the spec's fields. See [`EventBuilder`].
    pub fn builder() -> EventBuilder {
        EventBuilder::default()
    }

    /// The encoded bytes, ending with the blank line that dispatches the event.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The encoded bytes, ending with the blank line that dispatches the event.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The value of the event's `id` field, if it has one.
    pub fn id(&self) -> Option<&str> {
        std::str::from_utf8(self.id_bytes()?).ok()
    }

    /// The id's bytes, without re-checking that they are UTF-8 (they were a `&str`).
    pub(crate) fn id_bytes(&self) -> Option<&[u8]> {
        let (start, len) = self.id?;
        self.bytes
            .get(start as usize..start as usize + len as usize)
    }

    pub(crate) fn has_id(&self) -> bool {
        self.id.is_some()
    }

    /// Length of the encoded event in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always `false`: an encoded event holds at least its terminating blank line.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The same event, marked as a stream's last: its id is `prefix` followed by its old id,
    /// or `prefix` alone if it had none. A client that reconnects with that id as
    /// `Last-Event-ID` is told by [`SseLayer`](crate::SseLayer) to stop (`204 No Content`),
    /// if the layer recognises `prefix` (see
    /// [`SseLayer::finished_prefix`](crate::SseLayer::finished_prefix);
    /// [`SseContext::finish`](crate::SseContext::finish) uses the layer's own).
    ///
    /// Give the event data: an id in a block without data is lost by some clients.
    ///
    /// ```
    /// use tower_sse::{Event, DEFAULT_FINISHED_PREFIX};
    ///
    /// # fn main() -> Result<(), tower_sse::EventError> {
    /// let end = Event::builder().event("end").id("42").data("").build()?;
    /// let end = end.finishing(DEFAULT_FINISHED_PREFIX);
    /// assert_eq!(end.id(), Some("tower-sse:finished:42"));
    /// assert_eq!(end.as_bytes(), &b"event: end\nid: tower-sse:finished:42\ndata: \n\n"[..]);
    ///
    /// let end = Event::message("bye").finishing(DEFAULT_FINISHED_PREFIX);
    /// assert_eq!(end.as_bytes(), &b"id: tower-sse:finished:\ndata: bye\n\n"[..]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn finishing(&self, prefix: &crate::FinishedPrefix) -> Event {
        let prefix = prefix.as_str();
        let Some((start, len)) = self.id else {
            return self.with_validated_id(prefix);
        };
        // The id must stay one a client can send back: past the bound, the prefix alone
        // (the stream is over; its old id is not needed to resume it).
        if len as usize + prefix.len() > crate::last_event_id::DEFAULT_MAX_LEN {
            return self.without_id().with_validated_id(prefix);
        }
        let at = start as usize;
        let mut buf = BytesMut::with_capacity(self.bytes.len() + prefix.len());
        buf.extend_from_slice(&self.bytes[..at]);
        buf.extend_from_slice(prefix.as_bytes());
        buf.extend_from_slice(&self.bytes[at..]);
        Event {
            bytes: buf.freeze(),
            // A prefix is at most 64 bytes.
            id: Some((start, len + prefix.len() as u32)),
        }
    }

    /// The same event with an `id` field put in front. Only for ids already validated.
    pub(crate) fn with_validated_id(&self, id: &str) -> Event {
        let mut buf = BytesMut::with_capacity(self.bytes.len() + id.len() + 5);
        buf.extend_from_slice(b"id: ");
        buf.extend_from_slice(id.as_bytes());
        buf.put_u8(b'\n');
        buf.extend_from_slice(&self.bytes);
        Event {
            bytes: buf.freeze(),
            id: Some((4, id.len() as u32)),
        }
    }

    /// The same event without its `id` field, if it has one.
    pub(crate) fn without_id(&self) -> Event {
        let Some((start, len)) = self.id else {
            return self.clone();
        };
        let (start, end) = (start as usize, (start + len) as usize);
        // The field is `id: VALUE\n`: four bytes before the value, one after.
        match (
            self.bytes.get(..start.saturating_sub(4)),
            self.bytes.get(end + 1..),
        ) {
            (Some(before), Some(after)) => {
                let mut buf = BytesMut::with_capacity(before.len() + after.len());
                buf.extend_from_slice(before);
                buf.extend_from_slice(after);
                Event {
                    bytes: buf.freeze(),
                    id: None,
                }
            }
            _ => self.clone(),
        }
    }

    /// An event this crate encoded (without an id), carried by a broker as bytes: `None` if
    /// they do not end an event.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_encoded(bytes: Bytes) -> Option<Event> {
        bytes
            .ends_with(b"\n\n")
            .then_some(Event { bytes, id: None })
    }
}

impl From<Event> for Bytes {
    fn from(event: Event) -> Bytes {
        event.bytes
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Event")
            .field(&String::from_utf8_lossy(&self.bytes))
            .finish()
    }
}

/// A field of an event, as named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// `data`.
    Data,
    /// `event`, the event type.
    Event,
    /// `id`.
    Id,
    /// `retry`.
    Retry,
}

impl Field {
    /// The field's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Data => "data",
            Field::Event => "event",
            Field::Id => "id",
            Field::Retry => "retry",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated event type for [`Event::named`] and [`EventBuilder::event`], made once, usually
/// as a constant, like [`http::HeaderName::from_static`].
///
/// An event type selects the listener on the client (`addEventListener(type, ...)`). It must
/// not be empty (clients dispatch an empty type as `message`) and must not hold CR or LF
/// (they would end the field early). Other characters are fine: the type is never sent back
/// by the client, so the stricter [id rule](EventBuilder::id) does not apply to it.
///
/// ```
/// use tower_sse::{Event, EventType};
///
/// const TICK: EventType = EventType::from_static("tick");
/// assert_eq!(TICK.as_str(), "tick");
/// assert_eq!(Event::named(TICK, "1").as_bytes(), &b"event: tick\ndata: 1\n\n"[..]);
///
/// // The builder takes it too.
/// let event = Event::builder().event(TICK).id("7").data("1").build().unwrap();
/// assert_eq!(event.as_bytes(), &b"event: tick\nid: 7\ndata: 1\n\n"[..]);
///
/// // A type known only at run time is checked without panicking.
/// assert!(EventType::try_from("a\nb").is_err());
/// ```
///
/// An invalid constant does not compile:
///
/// ```compile_fail
/// const BAD: tower_sse::EventType = tower_sse::EventType::from_static("two\nlines");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventType(&'static str);

impl EventType {
    /// Makes an event type from a string literal, checked at compile time when used in a
    /// `const` (the usual way: `const TICK: EventType = EventType::from_static("tick");`).
    ///
    /// # Panics
    ///
    /// If `name` is empty or contains CR or LF. In a `const` item that is a compile error, so
    /// it never reaches run time; called outside a const context with such a value, it
    /// panics, exactly like [`http::HeaderName::from_static`]. For values known only at run
    /// time use [`EventType::try_from`] or [`EventBuilder::event`], which return an error.
    pub const fn from_static(name: &'static str) -> EventType {
        match check_event_type(name.as_bytes()) {
            Ok(()) => EventType(name),
            Err(EventTypeFault::Empty) => panic!("EventType::from_static: empty event type"),
            Err(EventTypeFault::LineBreak) => {
                panic!("EventType::from_static: event type contains CR or LF")
            }
        }
    }

    /// The event type as written on the wire.
    pub const fn as_str(&self) -> &'static str {
        self.0
    }
}

impl TryFrom<&'static str> for EventType {
    type Error = EventError;

    /// Checks `name` as [`EventType::from_static`] does, returning an error instead of
    /// panicking: [`EventError::EmptyEventType`] or [`EventError::LineBreak`].
    fn try_from(name: &'static str) -> Result<EventType, EventError> {
        match check_event_type(name.as_bytes()) {
            Ok(()) => Ok(EventType(name)),
            Err(fault) => Err(fault.into()),
        }
    }
}

impl AsRef<str> for EventType {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EventType").field(&self.0).finish()
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Why a value is not an event type.
#[derive(Clone, Copy)]
enum EventTypeFault {
    Empty,
    LineBreak,
}

impl From<EventTypeFault> for EventError {
    fn from(fault: EventTypeFault) -> EventError {
        match fault {
            EventTypeFault::Empty => EventError::EmptyEventType,
            EventTypeFault::LineBreak => EventError::LineBreak {
                field: Field::Event,
            },
        }
    }
}

/// The rule for event types, usable in a `const fn`: not empty, no CR or LF.
const fn check_event_type(name: &[u8]) -> Result<(), EventTypeFault> {
    if name.is_empty() {
        return Err(EventTypeFault::Empty);
    }
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'\n' || name[i] == b'\r' {
            return Err(EventTypeFault::LineBreak);
        }
        i += 1;
    }
    Ok(())
}

/// Why an event could not be built: the input cannot be carried by the SSE wire format, or
/// would decode differently from what was asked.
#[derive(Debug)]
#[non_exhaustive]
pub enum EventError {
    /// A CR or LF in a single-line field (`id` or `event`): it would end the field early and
    /// let the rest of the value be read as another field.
    LineBreak {
        /// The field that held the line break.
        field: Field,
    },
    /// A NUL in `id`: clients ignore such an id entirely.
    Nul {
        /// The field that held the NUL.
        field: Field,
    },
    /// A control character other than CR, LF and NUL in `id` (tab, 0x01, DEL, U+0085 and
    /// the rest of [`char::is_control`]). Clients would keep such an id, but the
    /// [`LastEventId`](crate::LastEventId) they send back with it is refused, so they could
    /// never resume from it.
    ControlCharacter {
        /// The field that held the control character.
        field: Field,
    },
    /// An `id` longer than [`DEFAULT_MAX_LEN`]
    /// bytes, the longest [`LastEventId`](crate::LastEventId) accepts back.
    TooLong {
        /// The field that was too long.
        field: Field,
        /// Its length, in bytes.
        len: usize,
        /// The longest allowed, in bytes.
        max: usize,
    },
    /// A single-valued field was set twice.
    Duplicate {
        /// The field set twice.
        field: Field,
    },
    /// An empty `event` type: clients dispatch it as `message`. Leave the field out instead.
    EmptyEventType,
    /// The event has no field and no comment: it would encode to a lone blank line.
    NoFields,
    /// The value given to [`EventBuilder::json_data`] could not be serialized.
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    Json(serde_json::Error),
}

impl EventError {
    /// The field the error is about, where there is one.
    pub fn field(&self) -> Option<Field> {
        match self {
            EventError::LineBreak { field }
            | EventError::Nul { field }
            | EventError::ControlCharacter { field }
            | EventError::TooLong { field, .. }
            | EventError::Duplicate { field } => Some(*field),
            EventError::EmptyEventType => Some(Field::Event),
            EventError::NoFields => None,
            #[cfg(feature = "json")]
            EventError::Json(_) => Some(Field::Data),
        }
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::LineBreak { field } => write!(
                f,
                "SSE field `{field}` contains a line break (CR or LF), which would end the field early"
            ),
            EventError::Nul { field } => write!(
                f,
                "SSE field `{field}` contains a NUL character, so clients would ignore it"
            ),
            EventError::ControlCharacter { field } => write!(
                f,
                "SSE field `{field}` contains a control character, which a reconnecting client's Last-Event-ID may not hold"
            ),
            EventError::TooLong { field, len, max } => write!(
                f,
                "SSE field `{field}` is {len} bytes long, more than the {max} a Last-Event-ID may hold"
            ),
            EventError::Duplicate { field } => {
                write!(f, "SSE field `{field}` was set more than once")
            }
            EventError::EmptyEventType => f.write_str(
                "SSE field `event` is empty; clients treat that as `message`, so leave it out",
            ),
            EventError::NoFields => f.write_str("SSE event has no field and no comment"),
            #[cfg(feature = "json")]
            EventError::Json(e) => write!(f, "SSE field `data` could not be serialized: {e}"),
        }
    }
}

impl std::error::Error for EventError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            #[cfg(feature = "json")]
            EventError::Json(e) => Some(e),
            _ => None,
        }
    }
}

/// Builds an [`Event`] with any of the spec's fields.
///
/// Setters never fail and never panic: each writes its field straight into the event's
/// buffer, and the first invalid input is kept and returned by [`build`](Self::build). So a
/// chain reads naturally and there is one `?` at the end. Fields are written in the order
/// they are set; the order has no meaning to clients.
///
/// ```
/// use tower_sse::{Event, EventError, Field};
///
/// let err = Event::builder().event("a").event("b").build().unwrap_err();
/// assert!(matches!(err, EventError::Duplicate { field: Field::Event }));
///
/// // An id-only event is allowed: clients record the id but dispatch nothing.
/// let id_only = Event::builder().id("7").build().unwrap();
/// assert_eq!(id_only.as_bytes(), &b"id: 7\n\n"[..]);
/// ```
#[must_use = "an EventBuilder does nothing until `build` is called"]
#[derive(Debug, Default)]
pub struct EventBuilder {
    buf: BytesMut,
    id: Option<(u32, u32)>,
    set: u8,
    error: Option<EventError>,
}

const SET_DATA: u8 = 1;
const SET_EVENT: u8 = 2;
const SET_ID: u8 = 4;
const SET_RETRY: u8 = 8;
const SET_COMMENT: u8 = 16;

impl EventBuilder {
    /// Records the first error; later setters become no-ops.
    fn fail(mut self, error: EventError) -> Self {
        self.error.get_or_insert(error);
        self
    }

    /// Whether a single-valued setter may write: no earlier error, and `flag` not yet set.
    /// Records a duplicate error otherwise.
    fn begin(&mut self, flag: u8, field: Field) -> bool {
        if self.error.is_some() {
            return false;
        }
        if self.set & flag != 0 {
            self.error = Some(EventError::Duplicate { field });
            return false;
        }
        self.set |= flag;
        true
    }

    /// Sets the data. Any text is valid: CR, LF and CRLF split it into several `data: `
    /// lines, which clients join with LF. An empty string dispatches an empty message.
    pub fn data(mut self, data: impl AsRef<str>) -> Self {
        if self.begin(SET_DATA, Field::Data) {
            write_data(&mut self.buf, data.as_ref().as_bytes());
        }
        self
    }

    /// Sets the data to `value` serialized as JSON, written straight into the event buffer
    /// with no intermediate `String`.
    ///
    /// ```
    /// # fn main() -> Result<(), tower_sse::EventError> {
    /// let event = tower_sse::Event::builder()
    ///     .json_data(&serde_json::json!({ "price": 1.5 }))
    ///     .build()?;
    /// assert_eq!(event.as_bytes(), &b"data: {\"price\":1.5}\n\n"[..]);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    pub fn json_data<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Self {
        if !self.begin(SET_DATA, Field::Data) {
            return self;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(b"data: ");
        let value_start = self.buf.len();
        if let Err(e) = serde_json::to_writer((&mut self.buf).writer(), value) {
            self.buf.truncate(start);
            return self.fail(EventError::Json(e));
        }
        // Compact JSON escapes line breaks inside strings, but a `RawValue` may carry
        // whitespace between tokens. Re-split in that (rare) case so no line can escape.
        if find_line_break(&self.buf[value_start..]).is_some() {
            let json = self.buf.split_off(value_start);
            self.buf.truncate(start);
            write_data(&mut self.buf, &json);
        } else {
            self.buf.put_u8(b'\n');
        }
        self
    }

    /// Sets the event type, which selects the listener on the client
    /// (`addEventListener(type, ...)`). Without it the type is `message`. Takes a `&str` or
    /// an [`EventType`] constant.
    ///
    /// Fails in [`build`](Self::build) if `event` is empty or contains CR or LF (see
    /// [`EventType`] for why no stricter rule applies).
    pub fn event(mut self, event: impl AsRef<str>) -> Self {
        let event = event.as_ref();
        if !self.begin(SET_EVENT, Field::Event) {
            return self;
        }
        if let Err(fault) = check_event_type(event.as_bytes()) {
            return self.fail(fault.into());
        }
        write_field(&mut self.buf, b"event: ", event.as_bytes());
        self
    }

    /// Sets the id, which the client sends back in `Last-Event-ID` when it reconnects. It
    /// carries over to later events that have no id. An empty id resets the client's last
    /// event id.
    ///
    /// The id must be one a reconnecting client can send back: the rule is the one
    /// [`LastEventId`](crate::LastEventId) applies to the header, so every id that builds
    /// parses back. Fails in [`build`](Self::build) with [`EventError::LineBreak`] for CR or
    /// LF, [`EventError::Nul`] for NUL, [`EventError::ControlCharacter`] for any other
    /// [control character](char::is_control), and [`EventError::TooLong`] past
    /// [`DEFAULT_MAX_LEN`] (256) bytes.
    pub fn id(mut self, id: impl AsRef<str>) -> Self {
        let id = id.as_ref();
        if !self.begin(SET_ID, Field::Id) {
            return self;
        }
        if let Err(fault) = check_id(id, DEFAULT_MAX_LEN) {
            return self.fail(id_error(fault));
        }
        let start = self.buf.len() + 4;
        write_field(&mut self.buf, b"id: ", id.as_bytes());
        self.id = Some((start as u32, id.len() as u32));
        self
    }

    /// Sets the reconnection time: how long the client waits before reconnecting after the
    /// stream ends. Written as whole milliseconds (sub-millisecond parts are dropped).
    pub fn retry(mut self, retry: Duration) -> Self {
        if self.begin(SET_RETRY, Field::Retry) {
            write_retry(&mut self.buf, retry);
        }
        self
    }

    /// Adds a comment. May be called several times; multi-line text becomes several comment
    /// lines. Clients ignore comments.
    pub fn comment(mut self, text: impl AsRef<str>) -> Self {
        if self.error.is_none() {
            self.set |= SET_COMMENT;
            write_comment(&mut self.buf, text.as_ref().as_bytes());
        }
        self
    }

    /// Finishes the event.
    ///
    /// # Errors
    ///
    /// The first invalid input given to a setter (see [`EventError`]), or
    /// [`EventError::NoFields`] if nothing was set.
    pub fn build(mut self) -> Result<Event, EventError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.set == 0 {
            return Err(EventError::NoFields);
        }
        self.buf.put_u8(b'\n');
        Ok(Event {
            bytes: self.buf.freeze(),
            id: self.id,
        })
    }
}

/// The error for an id that breaks the shared id rule.
fn id_error(fault: IdFault) -> EventError {
    let field = Field::Id;
    match fault {
        IdFault::TooLong { len, max } => EventError::TooLong { field, len, max },
        IdFault::LineBreak => EventError::LineBreak { field },
        IdFault::Nul => EventError::Nul { field },
        IdFault::Control => EventError::ControlCharacter { field },
    }
}

/// Writes the `retry:` line for `retry`, in whole milliseconds.
pub(crate) fn write_retry(buf: &mut BytesMut, retry: Duration) {
    let mut digits = itoa::Buffer::new();
    write_field(buf, b"retry: ", digits.format(retry.as_millis()).as_bytes());
}

fn write_field(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.reserve(name.len() + value.len() + 1);
    buf.extend_from_slice(name);
    buf.extend_from_slice(value);
    buf.put_u8(b'\n');
}

/// Writes `data` as `data: ` lines, split on CR, LF and CRLF.
fn write_data(buf: &mut BytesMut, data: &[u8]) {
    write_lines(buf, b"data: ", data);
}

/// Writes `text` as comment lines, split on CR, LF and CRLF.
fn write_comment(buf: &mut BytesMut, text: &[u8]) {
    if text.is_empty() {
        buf.extend_from_slice(b":\n");
    } else {
        write_lines(buf, b": ", text);
    }
}

fn write_lines(buf: &mut BytesMut, prefix: &[u8], mut rest: &[u8]) {
    // Room for the text and one prefix; each further line grows the buffer as needed.
    buf.reserve(rest.len() + prefix.len() + 2);
    loop {
        buf.extend_from_slice(prefix);
        match find_line_break(rest) {
            Some(i) => {
                let (line, tail) = rest.split_at(i);
                buf.extend_from_slice(line);
                buf.put_u8(b'\n');
                // `tail` starts with the terminator; CRLF is one terminator.
                rest = match tail {
                    [b'\r', b'\n', after @ ..] => after,
                    [_, after @ ..] => after,
                    [] => tail,
                };
            }
            None => {
                buf.extend_from_slice(rest);
                buf.put_u8(b'\n');
                return;
            }
        }
    }
}

/// Position of the first CR or LF.
fn find_line_break(bytes: &[u8]) -> Option<usize> {
    memchr::memchr2(b'\n', b'\r', bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(e: Event) -> String {
        String::from_utf8(e.into_bytes().to_vec()).unwrap()
    }

    #[test]
    fn data_splits_on_every_terminator() {
        assert_eq!(
            enc(Event::message("a\nb\rc\r\nd")),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        // CR then LF in separate places stay two terminators; LF CR is two as well.
        assert_eq!(
            enc(Event::message("a\n\rb")),
            "data: a\ndata: \ndata: b\n\n"
        );
        assert_eq!(enc(Event::message("\r\n")), "data: \ndata: \n\n");
    }

    #[test]
    fn trailing_newline_survives_as_empty_last_line() {
        assert_eq!(enc(Event::message("a\n")), "data: a\ndata: \n\n");
        assert_eq!(enc(Event::message("")), "data: \n\n");
    }

    #[test]
    fn leading_space_and_colon_kept_by_the_single_space() {
        assert_eq!(enc(Event::message(" x: y")), "data:  x: y\n\n");
    }

    #[test]
    fn comments_split_into_lines() {
        assert_eq!(enc(Event::comment("a\r\nb\rc")), ": a\n: b\n: c\n\n");
        assert_eq!(enc(Event::comment("")), ":\n\n");
        let e = Event::builder()
            .comment("one")
            .comment("two")
            .data("x")
            .build()
            .unwrap();
        assert_eq!(enc(e), ": one\n: two\ndata: x\n\n");
    }

    #[test]
    fn retry_is_integer_milliseconds() {
        let e = Event::builder()
            .retry(Duration::from_micros(1_500_900))
            .build()
            .unwrap();
        assert_eq!(enc(e), "retry: 1500\n\n");
        let e = Event::builder().retry(Duration::ZERO).build().unwrap();
        assert_eq!(enc(e), "retry: 0\n\n");
        let e = Event::builder().retry(Duration::MAX).build().unwrap();
        assert_eq!(enc(e), format!("retry: {}\n\n", Duration::MAX.as_millis()));
    }

    #[test]
    fn id_and_event_reject_line_breaks_and_nul() {
        for bad in ["a\nb", "a\rb", "a\r\nb", "\n"] {
            let err = Event::builder().id(bad).build().unwrap_err();
            assert!(matches!(err, EventError::LineBreak { field: Field::Id }));
            let err = Event::builder().event(bad).build().unwrap_err();
            assert!(matches!(
                err,
                EventError::LineBreak {
                    field: Field::Event
                }
            ));
        }
        let err = Event::builder().id("a\0b").data("x").build().unwrap_err();
        assert!(matches!(err, EventError::Nul { field: Field::Id }));
        assert!(err.to_string().contains("`id`"));
        // NUL is fine in an event type and in data.
        assert!(Event::builder().event("a\0").data("\0").build().is_ok());
    }

    #[test]
    fn id_follows_the_last_event_id_rule() {
        for bad in ["a\tb", "\u{1}", "\u{7f}", "x\u{85}", "\u{9f}"] {
            let err = Event::builder().id(bad).data("x").build().unwrap_err();
            assert!(
                matches!(err, EventError::ControlCharacter { field: Field::Id }),
                "{bad:?}: {err:?}"
            );
            assert_eq!(err.field(), Some(Field::Id));
        }
        let long = "7".repeat(DEFAULT_MAX_LEN + 1);
        let err = Event::builder().id(&long).build().unwrap_err();
        assert!(matches!(
            err,
            EventError::TooLong {
                field: Field::Id,
                len: 257,
                max: 256
            }
        ));
        assert!(err.to_string().contains("257"));
        let max = "7".repeat(DEFAULT_MAX_LEN);
        assert!(Event::builder().id(&max).build().is_ok());
        // U+00A0 and U+2028 are not control characters: fine in an id.
        assert!(Event::builder().id("a\u{a0}\u{2028}").build().is_ok());
    }

    #[test]
    fn named_events_and_event_types() {
        const TICK: EventType = EventType::from_static("tick");
        assert_eq!(
            enc(Event::named(TICK, "a\nb")),
            "event: tick\ndata: a\ndata: b\n\n"
        );
        let built = Event::builder().event(TICK).data("a\nb").build().unwrap();
        assert_eq!(built, Event::named(TICK, "a\nb"));
        assert_eq!(TICK.to_string(), "tick");
        assert_eq!(format!("{TICK:?}"), "EventType(\"tick\")");
        // The type is never sent back, so only the wire rule applies: NUL and tab are fine.
        assert!(EventType::try_from("a\0\t").is_ok());
        assert!(matches!(
            EventType::try_from(""),
            Err(EventError::EmptyEventType)
        ));
        assert!(matches!(
            EventType::try_from("a\rb"),
            Err(EventError::LineBreak {
                field: Field::Event
            })
        ));
    }

    #[test]
    #[should_panic(expected = "CR or LF")]
    fn from_static_panics_outside_const() {
        let name: &'static str = Box::leak(String::from("a\nb").into_boxed_str());
        let _ = EventType::from_static(name);
    }

    #[test]
    fn duplicates_and_empty_are_errors() {
        let err = Event::builder().data("a").data("b").build().unwrap_err();
        assert!(matches!(err, EventError::Duplicate { field: Field::Data }));
        let err = Event::builder().id("a").id("b").build().unwrap_err();
        assert!(matches!(err, EventError::Duplicate { field: Field::Id }));
        let err = Event::builder()
            .retry(Duration::ZERO)
            .retry(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            EventError::Duplicate {
                field: Field::Retry
            }
        ));
        let err = Event::builder().event("").data("x").build().unwrap_err();
        assert!(matches!(err, EventError::EmptyEventType));
        assert!(matches!(
            Event::builder().build().unwrap_err(),
            EventError::NoFields
        ));
    }

    #[test]
    fn first_error_wins() {
        let err = Event::builder()
            .id("\n")
            .event("\n")
            .id("again")
            .build()
            .unwrap_err();
        assert!(matches!(err, EventError::LineBreak { field: Field::Id }));
    }

    #[test]
    fn empty_id_resets_and_is_allowed() {
        let e = Event::builder().id("").data("x").build().unwrap();
        assert_eq!(enc(e.clone()), "id: \ndata: x\n\n");
        assert_eq!(e.id(), Some(""));
    }

    #[test]
    fn id_is_readable_back() {
        let e = Event::builder()
            .event("t")
            .id("abc")
            .data("x")
            .build()
            .unwrap();
        assert_eq!(e.id(), Some("abc"));
        assert_eq!(Event::message("x").id(), None);
        let with = Event::message("x").with_validated_id("9");
        assert_eq!(enc(with.clone()), "id: 9\ndata: x\n\n");
        assert_eq!(with.id(), Some("9"));
    }

    #[test]
    fn keep_alive_constant() {
        assert_eq!(KEEP_ALIVE.as_bytes(), &b":\n\n"[..]);
    }

    #[test]
    fn line_break_scanner_matches_naive() {
        let samples: &[&[u8]] = &[
            b"",
            b"a",
            b"abcdefgh",
            b"abcdefg\n",
            b"abcdefgh\r",
            b"\x8d\x0a",
            b"\xff\xfe\x0c\x0e\x0b\x8a\x8d........\r",
        ];
        for s in samples {
            let naive = s.iter().position(|&b| b == b'\n' || b == b'\r');
            assert_eq!(find_line_break(s), naive, "{s:?}");
        }
        for len in 0..40 {
            for pos in 0..len {
                for t in [b'\n', b'\r'] {
                    let mut v = vec![b'x'; len];
                    v[pos] = t;
                    assert_eq!(find_line_break(&v), Some(pos));
                }
            }
        }
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_data_is_one_line_and_resplit_if_raw() {
        let e = Event::builder()
            .json_data(&serde_json::json!({"a": "x\ny"}))
            .build()
            .unwrap();
        assert_eq!(enc(e), "data: {\"a\":\"x\\ny\"}\n\n");
        let raw = serde_json::value::RawValue::from_string("{\n\"a\": 1}".into()).unwrap();
        let e = Event::builder().json_data(&raw).build().unwrap();
        assert_eq!(enc(e), "data: {\ndata: \"a\": 1}\n\n");
    }
}
