//! A test-only event stream decoder written step by step from the WHATWG HTML standard,
//! section 9.2.5 "Parsing an event stream" and 9.2.6 "Interpreting an event stream":
//! <https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>.
//!
//! It shares no code with the crate under test. Comments quote or paraphrase the spec step
//! they implement, so a reviewer can check it line by line. It is written for clarity, not
//! speed.
//!
//! # Example
//!
//! ```ignore
//! mod common;
//! use common::whatwg::{decode, Decoded};
//!
//! let out = decode(b"event: add\ndata: 1\n\n");
//! assert_eq!(out.events, vec![Decoded::new("add", "1", "")]);
//! ```

/// One dispatched `MessageEvent`, as a browser's `EventSource` listener would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The event's `type`: the event type buffer, or `message` when that was empty.
    pub event_type: String,
    /// The event's `data`: the data buffer without its final LF.
    pub data: String,
    /// The event's `lastEventId`: the event source's last event ID string at dispatch.
    pub last_event_id: String,
}

impl Decoded {
    /// Shorthand for writing expected values in tests.
    pub fn new(event_type: &str, data: &str, last_event_id: &str) -> Decoded {
        Decoded {
            event_type: event_type.to_owned(),
            data: data.to_owned(),
            last_event_id: last_event_id.to_owned(),
        }
    }
}

/// Everything a client learned from a whole stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// The dispatched events, in order.
    pub events: Vec<Decoded>,
    /// The last reconnection time (milliseconds) set by a valid `retry` field, if any.
    pub retry: Option<u128>,
    /// The event source's last event ID string when the stream ended. Only dispatches set it
    /// (step 1 of "dispatch the event"), so an `id` in a discarded partial event is not here.
    pub last_event_id: String,
}

/// An incremental decoder: [`feed`](Decoder::feed) it bytes in chunks of any size (a
/// multi-byte character, a BOM or a CRLF may be split between chunks), then call
/// [`finish`](Decoder::finish).
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes seen so far while we still cannot tell whether the stream starts with a BOM.
    bom_pending: Vec<u8>,
    /// Set once the leading BOM (if any) has been dealt with.
    started: bool,
    /// The bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// The previous byte was a CR that ended a line, so an LF right after it is part of the
    /// same CRLF terminator, even when it arrives in the next chunk.
    after_cr: bool,
    /// "a data buffer, an event type buffer, and a last event ID buffer ... must be
    /// initialized to the empty string."
    data: String,
    event_type: String,
    last_event_id_buffer: String,
    /// The event source's "last event ID string", set only on dispatch.
    last_event_id: String,
    /// The event stream's reconnection time, once a `retry` field set it.
    retry: Option<u128>,
    /// Dispatched events not yet taken.
    events: Vec<Decoded>,
}

const BOM: &[u8] = "\u{feff}".as_bytes();

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Feeds the next chunk of the byte stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut chunk = chunk;
        let mut joined;
        if !self.started {
            // "The stream must then be decoded using the UTF-8 decode algorithm", which
            // strips one leading BOM. It may be split across chunks, so hold bytes back
            // until we can tell.
            self.bom_pending.extend_from_slice(chunk);
            let pending = &self.bom_pending;
            if pending.len() < BOM.len() && BOM.starts_with(pending) {
                return;
            }
            self.started = true;
            joined = std::mem::take(&mut self.bom_pending);
            if joined.starts_with(BOM) {
                joined.drain(..BOM.len());
            }
            chunk = &joined;
        }
        for &byte in chunk {
            self.byte(byte);
        }
    }

    /// Ends the stream and returns what a client learned from it.
    ///
    /// "Once the end of the file is reached, any pending data must be discarded. (If the file
    /// ends in the middle of an event, before the final empty line, the incomplete event is
    /// not dispatched.)" So an unterminated line and the buffers of an unfinished event are
    /// dropped here.
    pub fn finish(mut self) -> Output {
        Output {
            events: self.take_events(),
            retry: self.retry,
            last_event_id: self.last_event_id,
        }
    }

    /// Removes and returns the events dispatched so far, for tests that check events are
    /// delivered before the stream ends.
    pub fn take_events(&mut self) -> Vec<Decoded> {
        std::mem::take(&mut self.events)
    }

    /// The reconnection time set by the last valid `retry` field so far, in milliseconds.
    pub fn retry(&self) -> Option<u128> {
        self.retry
    }

    /// The event source's last event ID string so far (set on dispatch).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    fn byte(&mut self, byte: u8) {
        // "Lines must be separated by either a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF)
        // character pair, a single U+000A LINE FEED (LF) character, or a single U+000D
        // CARRIAGE RETURN (CR) character." CR and LF are ASCII, so they never occur inside a
        // multi-byte UTF-8 sequence and lines can be split on bytes before decoding.
        let after_cr = std::mem::replace(&mut self.after_cr, false);
        match byte {
            b'\n' if after_cr => {} // second half of a CRLF
            b'\n' => self.end_line(),
            b'\r' => {
                self.after_cr = true;
                self.end_line();
            }
            _ => self.line.push(byte),
        }
    }

    fn end_line(&mut self) {
        let bytes = std::mem::take(&mut self.line);
        // UTF-8 decode, replacing invalid sequences with U+FFFD. Decoding each line on its
        // own gives the same text as decoding the whole stream, because a CR or LF byte ends
        // any unfinished sequence.
        let line = String::from_utf8_lossy(&bytes);
        self.process_line(&line);
    }

    /// "Lines must be processed, in the order they are received, as follows:"
    fn process_line(&mut self, line: &str) {
        if line.is_empty() {
            // "If the line is empty (a blank line): Dispatch the event, as defined below."
            self.dispatch();
        } else if line.starts_with(':') {
            // "If the line starts with a U+003A COLON character (:): Ignore the line."
        } else if let Some(colon) = line.find(':') {
            // "If the line contains a U+003A COLON character (:): Collect the characters on
            // the line before the first U+003A COLON character (:), and let field be that
            // string. Collect the characters on the line after the first U+003A COLON
            // character (:), and let value be that string. If value starts with a U+0020
            // SPACE character, remove it from value."
            let field = &line[..colon];
            let value = &line[colon + 1..];
            let value = value.strip_prefix(' ').unwrap_or(value);
            self.process_field(field, value);
        } else {
            // "Otherwise, the string is not empty but does not contain a U+003A COLON
            // character (:): Process the field using the steps described below, using the
            // whole line as the field name, and the empty string as the field value."
            self.process_field(line, "");
        }
    }

    /// "The steps to process the field given a field name and a field value depend on the
    /// field name, as given in the following list. Field names must be compared literally,
    /// with no case folding performed."
    fn process_field(&mut self, field: &str, value: &str) {
        match field {
            // "Set the event type buffer to field value."
            "event" => self.event_type = value.to_owned(),
            // "Append the field value to the data buffer, then append a single U+000A LINE
            // FEED (LF) character to the data buffer."
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            // "If the field value does not contain U+0000 NULL, then set the last event ID
            // buffer to the field value. Otherwise, ignore the field."
            "id" if !value.contains('\0') => self.last_event_id_buffer = value.to_owned(),
            // "If the field value consists of only ASCII digits, then interpret the field
            // value as an integer in base ten, and set the event stream's reconnection time
            // to that integer. Otherwise, ignore the field."
            //
            // An empty value is ignored, as browsers do (it names no integer). A value too
            // large for u128 saturates: the spec sets no bound, and no test needs more.
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                let ms = value.bytes().fold(0u128, |acc, b| {
                    acc.saturating_mul(10).saturating_add(u128::from(b - b'0'))
                });
                self.retry = Some(ms);
            }
            // The ignored cases of `id` and `retry` above, and "Otherwise: The field is
            // ignored."
            _ => {}
        }
    }

    /// "When the user agent is required to dispatch the event", the steps for web browsers.
    fn dispatch(&mut self) {
        // 1. "Set the last event ID string of the event source to the value of the last event
        //    ID buffer. The buffer does not get reset, so the last event ID string of the
        //    event source remains set to this value until the next time it is set by the
        //    server."
        self.last_event_id = self.last_event_id_buffer.clone();
        // 2. "If the data buffer is an empty string, set the data buffer and the event type
        //    buffer to the empty string and return."
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        // 3. "If the data buffer's last character is a U+000A LINE FEED (LF) character, then
        //    remove the last character from the data buffer."
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        // 5./6. "Initialize event's type attribute to "message", its data attribute to data,
        //    ... and its lastEventId attribute to the last event ID string of the event
        //    source. If the event type buffer has a value other than the empty string, change
        //    the type of the newly created event to equal the value of the event type buffer."
        let event_type = std::mem::take(&mut self.event_type);
        let event_type = if event_type.is_empty() {
            "message".to_owned()
        } else {
            event_type
        };
        // 7. "Set the data buffer and the event type buffer to the empty string." (Done by
        //    the `take`s above.) 8. Queue the event.
        self.events.push(Decoded {
            event_type,
            data,
            last_event_id: self.last_event_id.clone(),
        });
    }
}

/// Decodes a whole stream given in one chunk.
pub fn decode(bytes: &[u8]) -> Output {
    decode_chunks([bytes])
}

/// Decodes a stream given as a sequence of chunks.
pub fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Output {
    let mut decoder = Decoder::new();
    for chunk in chunks {
        decoder.feed(chunk);
    }
    decoder.finish()
}

/// Splits `bytes` at the given offsets (taken modulo `bytes.len() + 1`, in any order, repeats
/// allowed, so empty chunks occur too). Useful with proptest-generated cut points.
pub fn split_at_cuts<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        chunks.push(&bytes[start..cut]);
        start = cut;
    }
    chunks.push(&bytes[start..]);
    chunks
}
