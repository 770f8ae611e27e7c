//! The encoder's wire format, checked two ways (see `/work/shared/FIELD.md` for the rules):
//!
//! - byte for byte, for every rule the unit tests in `src/event.rs` do not already pin down;
//! - by round trip: events built from generated input are decoded by the spec-following
//!   decoder in `common/whatwg.rs`, fed in random chunks, and must give back exactly what
//!   was asked for (with CRLF and CR in data turned into LF, which the format imposes).
//!   The independent crate `eventsource-stream` must agree wherever it follows the spec.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::whatwg::{decode, decode_chunks, split_at_cuts, Decoded, Output};
use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use tower_sse::last_event_id::DEFAULT_MAX_LEN;
use tower_sse::{Event, EventError, Field, LastEventId, KEEP_ALIVE};

// ---- Helpers -------------------------------------------------------------------------------

/// What a client receives for `data`: every CRLF and every lone CR becomes LF (FIELD.md 3).
fn normalize(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

fn text(event: &Event) -> &str {
    std::str::from_utf8(event.as_bytes()).expect("encoder wrote invalid UTF-8")
}

fn msg(data: &str, id: &str) -> Decoded {
    Decoded::new("message", data, id)
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
}

/// Decodes with the `eventsource-stream` crate, fed the same chunks as our decoder.
///
/// Known deviations of eventsource-stream 0.2 from the WHATWG algorithm (each is shown by
/// `eventsource_stream_deviations_are_real` below; comparisons avoid exactly these):
///
/// 1. It has no stream-level reconnection time: `retry` is reported only on a dispatched
///    event, so a `retry` in an event without data (retry-only, id-only, comment) is lost.
/// 2. It parses `retry` with `str::parse::<u64>`, so values above `u64::MAX` ms are ignored
///    (the spec sets them), and `+5` is accepted (the spec requires ASCII digits only).
/// 3. A line ended by a lone CR at the very end of the input waits for a possible LF that
///    never comes, so an event whose blank line is a final lone CR is lost at EOF. Our
///    encoder only writes LF, so this never affects encoder output.
///
/// Data, event type and last event id agree with the spec on everything the encoder writes.
fn eventsource_decode(chunks: &[&[u8]]) -> Vec<eventsource_stream::Event> {
    let items: Vec<Result<Bytes, Infallible>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stream = futures_util::stream::iter(items).eventsource();
    RUNTIME.with(|rt| {
        rt.block_on(
            stream
                .map(|r| r.expect("eventsource-stream rejected encoder output"))
                .collect(),
        )
    })
}

/// The retry value eventsource-stream can report (deviation 2), in milliseconds.
fn eventsource_retry(retry: Option<Duration>) -> Option<Duration> {
    let ms = u64::try_from(retry?.as_millis()).ok()?;
    Some(Duration::from_millis(ms))
}

/// Checks that the encoded bytes form exactly one event: lines that start with a field the
/// encoder writes, no CR anywhere, no blank line before the final one (which would split the
/// event in two), and the terminating blank line at the end (FIELD.md 3, 4, 10).
fn assert_one_well_formed_event(bytes: &[u8]) {
    assert!(!bytes.contains(&b'\r'), "CR on the wire: {bytes:?}");
    assert!(bytes.ends_with(b"\n\n"), "no terminating blank line");
    let body = &bytes[..bytes.len() - 1];
    for line in body.split_inclusive(|&b| b == b'\n') {
        assert!(
            line == b":\n"
                || [&b": "[..], b"data: ", b"event: ", b"id: ", b"retry: "]
                    .iter()
                    .any(|p| line.starts_with(p)),
            "unexpected line {:?} in {:?}",
            String::from_utf8_lossy(line),
            String::from_utf8_lossy(bytes)
        );
    }
}

// ---- Byte-exact encoding ----------------------------------------------------------------

#[test]
fn fields_are_written_in_setter_order_with_one_space() {
    let e = Event::builder()
        .data("x")
        .retry(Duration::from_secs(1))
        .comment("c")
        .id("7")
        .event("t")
        .build()
        .unwrap();
    assert_eq!(text(&e), "data: x\nretry: 1000\n: c\nid: 7\nevent: t\n\n");
    let out = decode(e.as_bytes());
    assert_eq!(out.events, vec![Decoded::new("t", "x", "7")]);
    assert_eq!(out.retry, Some(1000));
}

#[test]
fn leading_spaces_survive_in_every_field() {
    // FIELD.md 4: the client strips exactly one space, the one the encoder writes.
    let e = Event::builder()
        .event("  t")
        .id(" 7 ")
        .data("  x ")
        .build()
        .unwrap();
    assert_eq!(text(&e), "event:   t\nid:  7 \ndata:   x \n\n");
    assert_eq!(
        decode(e.as_bytes()).events,
        vec![Decoded::new("  t", "  x ", " 7 ")]
    );
    assert_eq!(e.id(), Some(" 7 "));
    assert_eq!(text(&Event::comment(" c")), ":  c\n\n");
}

#[test]
fn colons_in_values_are_plain_text() {
    let e = Event::builder()
        .event("a:b")
        .id(":")
        .data(":x: y")
        .build()
        .unwrap();
    assert_eq!(text(&e), "event: a:b\nid: :\ndata: :x: y\n\n");
    assert_eq!(
        decode(e.as_bytes()).events,
        vec![Decoded::new("a:b", ":x: y", ":")]
    );
}

#[test]
fn data_cannot_inject_fields_or_end_the_event() {
    let data = "x\nevent: evil\rid: 666\r\nretry: 1\n\ndata: y\n";
    let e = Event::message(data);
    assert_eq!(
        text(&e),
        "data: x\ndata: event: evil\ndata: id: 666\ndata: retry: 1\ndata: \ndata: data: y\ndata: \n\n"
    );
    let out = decode(e.as_bytes());
    assert_eq!(out.events, vec![msg(&normalize(data), "")]);
    assert_eq!(out.retry, None);
    assert_eq!(out.last_event_id, "");
}

#[test]
fn data_of_only_line_breaks() {
    assert_eq!(text(&Event::message("\n")), "data: \ndata: \n\n");
    assert_eq!(text(&Event::message("\r")), "data: \ndata: \n\n");
    assert_eq!(text(&Event::message("\r\r")), "data: \ndata: \ndata: \n\n");
    assert_eq!(
        text(&Event::message("\r\r\n")),
        "data: \ndata: \ndata: \n\n"
    );
    assert_eq!(text(&Event::message("\n\n")), "data: \ndata: \ndata: \n\n");
    for data in ["\n", "\r", "\r\r", "\r\r\n", "\n\n", "\n\r\n\r"] {
        let out = decode(Event::message(data).as_bytes());
        assert_eq!(out.events, vec![msg(&normalize(data), "")], "{data:?}");
    }
}

#[test]
fn empty_data_dispatches_an_empty_message() {
    // FIELD.md 6: "A `data:` line with nothing after it dispatches \"\"".
    let e = Event::message("");
    assert_eq!(text(&e), "data: \n\n");
    assert_eq!(decode(e.as_bytes()).events, vec![msg("", "")]);
}

#[test]
fn crlf_across_the_eight_byte_scan_boundary_is_one_terminator() {
    // The line-break scanner reads eight bytes at a time; a CRLF whose halves fall in two
    // words, or whose CR is the last byte of the input, must still count once.
    for pos in 0..26 {
        let head = "x".repeat(pos);
        let e = Event::message(format!("{head}\r\ny"));
        assert_eq!(
            text(&e),
            format!("data: {head}\ndata: y\n\n"),
            "CRLF at {pos}"
        );
        let e = Event::message(format!("{head}\r"));
        assert_eq!(text(&e), format!("data: {head}\ndata: \n\n"), "CR at {pos}");
        let e = Event::message(format!("{head}\n\r"));
        assert_eq!(
            text(&e),
            format!("data: {head}\ndata: \ndata: \n\n"),
            "LF CR at {pos}"
        );
    }
}

#[test]
fn bytes_that_resemble_cr_or_lf_are_not_line_breaks() {
    // U+010A and U+010D are C4 8A and C4 8D in UTF-8: 0x8A and 0x8D differ from LF and CR
    // only in the high bit, the classic false positive of word-at-a-time scanners. U+0085
    // (NEL), U+2028, U+2029, VT and FF end lines elsewhere, but not in SSE.
    let data = "\u{10a}\u{10d}".repeat(9) + "\u{85}\u{2028}\u{2029}\u{b}\u{c}";
    let e = Event::message(&data);
    assert_eq!(text(&e), format!("data: {data}\n\n"));
    assert_eq!(decode(e.as_bytes()).events, vec![msg(&data, "")]);
}

#[test]
fn nul_bom_and_astral_characters_pass_through_data() {
    let data = "\0a\u{feff}b\u{1f600}\0";
    let e = Event::message(data);
    assert_eq!(text(&e), format!("data: {data}\n\n"));
    assert_eq!(decode(e.as_bytes()).events, vec![msg(data, "")]);
    // A data line that starts with a BOM is not at stream start, so it is kept.
    let e = Event::message("\u{feff}x");
    assert_eq!(decode(e.as_bytes()).events, vec![msg("\u{feff}x", "")]);
}

#[test]
fn nul_is_allowed_in_event_type_but_not_in_id() {
    let e = Event::builder().event("a\0b").data("x").build().unwrap();
    assert_eq!(text(&e), "event: a\0b\ndata: x\n\n");
    assert_eq!(
        decode(e.as_bytes()).events,
        vec![Decoded::new("a\0b", "x", "")]
    );
    for id in ["\0", "\0a", "a\0"] {
        let err = Event::builder().id(id).data("x").build().unwrap_err();
        assert!(
            matches!(err, EventError::Nul { field: Field::Id }),
            "{id:?}"
        );
    }
}

#[test]
fn explicit_message_type_is_written() {
    let e = Event::builder().event("message").data("x").build().unwrap();
    assert_eq!(text(&e), "event: message\ndata: x\n\n");
    assert_eq!(decode(e.as_bytes()).events, vec![msg("x", "")]);
}

#[test]
fn events_without_data_dispatch_nothing_but_still_apply() {
    // FIELD.md 6: the id still sets the last event id, retry still applies.
    let id_only = Event::builder().id("5").build().unwrap();
    let retry_only = Event::builder()
        .retry(Duration::from_millis(2500))
        .build()
        .unwrap();
    let comment_only = Event::builder().comment("hi").build().unwrap();
    assert_eq!(text(&id_only), "id: 5\n\n");
    assert_eq!(text(&retry_only), "retry: 2500\n\n");
    assert_eq!(text(&comment_only), ": hi\n\n");
    let stream = [
        id_only.as_bytes().clone(),
        retry_only.as_bytes().clone(),
        comment_only.as_bytes().clone(),
        Event::message("after").into_bytes(),
    ]
    .concat();
    let out = decode(&stream);
    assert_eq!(out.events, vec![msg("after", "5")]);
    assert_eq!(out.retry, Some(2500));
    assert_eq!(out.last_event_id, "5");
}

#[test]
fn keep_alive_and_comments_are_invisible_to_clients() {
    // FIELD.md 6: heartbeats are comments, never empty data.
    assert_eq!(decode(KEEP_ALIVE.as_bytes()), Output::default());
    let multi = Event::comment("a\r\nb\n\nc\r");
    assert_eq!(text(&multi), ": a\n: b\n: \n: c\n: \n\n");
    assert_eq!(decode(multi.as_bytes()), Output::default());
    // A comment between events changes nothing, also not the last event id.
    let stream = [
        Event::builder()
            .id("1")
            .data("a")
            .build()
            .unwrap()
            .into_bytes(),
        KEEP_ALIVE.into_bytes(),
        multi.into_bytes(),
        Event::message("b").into_bytes(),
    ]
    .concat();
    assert_eq!(decode(&stream).events, vec![msg("a", "1"), msg("b", "1")]);
}

#[test]
fn empty_comment_in_builder_is_a_bare_colon() {
    let e = Event::builder().comment("").data("x").build().unwrap();
    assert_eq!(text(&e), ":\ndata: x\n\n");
}

#[test]
fn empty_id_resets_the_last_event_id() {
    let stream = [
        Event::builder()
            .id("9")
            .data("a")
            .build()
            .unwrap()
            .into_bytes(),
        Event::builder()
            .id("")
            .data("b")
            .build()
            .unwrap()
            .into_bytes(),
    ]
    .concat();
    let out = decode(&stream);
    assert_eq!(out.events, vec![msg("a", "9"), msg("b", "")]);
    assert_eq!(out.last_event_id, "");
}

#[test]
fn retry_is_whole_milliseconds_in_ascii_digits() {
    let cases = [
        (Duration::from_nanos(999_999), "0"),
        (Duration::from_millis(1), "1"),
        (Duration::from_secs(15), "15000"),
        (Duration::from_millis(u64::MAX), "18446744073709551615"),
    ];
    for (retry, digits) in cases {
        let e = Event::builder().retry(retry).build().unwrap();
        assert_eq!(text(&e), format!("retry: {digits}\n\n"));
        assert_eq!(decode(e.as_bytes()).retry, Some(retry.as_millis()));
    }
}

#[test]
fn event_bytes_accessors_agree() {
    let e = Event::builder().id("1").data("x").build().unwrap();
    assert_eq!(e.len(), e.as_bytes().len());
    assert!(!e.is_empty());
    assert!(!KEEP_ALIVE.is_empty());
    assert_eq!(Bytes::from(e.clone()), e.clone().into_bytes());
    // Cloning shares the encoded buffer instead of copying the payload.
    let clone = e.clone();
    assert_eq!(clone.as_bytes().as_ptr(), e.as_bytes().as_ptr());
    assert_eq!(clone, e);
    assert!(format!("{e:?}").contains("data: x"));
}

#[test]
fn errors_are_send_sync_and_name_their_field() {
    fn assert_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
    let cases: Vec<(EventError, Option<Field>, &str)> = vec![
        (
            Event::builder().id("a\rb").build().unwrap_err(),
            Some(Field::Id),
            "`id`",
        ),
        (
            Event::builder().event("a\nb").build().unwrap_err(),
            Some(Field::Event),
            "`event`",
        ),
        (
            Event::builder().id("\0").build().unwrap_err(),
            Some(Field::Id),
            "`id`",
        ),
        (
            Event::builder().data("").data("").build().unwrap_err(),
            Some(Field::Data),
            "`data`",
        ),
        (
            Event::builder().event("").build().unwrap_err(),
            Some(Field::Event),
            "`event`",
        ),
        (Event::builder().build().unwrap_err(), None, "no field"),
    ];
    for (err, field, needle) in cases {
        assert_error(&err);
        assert_eq!(err.field(), field, "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
        assert!(boxed.source().is_none());
    }
    assert_eq!(Field::Retry.to_string(), "retry");
}

#[test]
fn message_matches_single_event_decoders() {
    // One hand-written check that both decoders read the same simple stream the same way.
    let bytes = Event::builder()
        .event("t")
        .id("1")
        .retry(Duration::from_millis(5))
        .data("a\r\nb")
        .build()
        .unwrap()
        .into_bytes();
    let ours = decode(&bytes);
    let theirs = eventsource_decode(&[&bytes[..]]);
    assert_eq!(ours.events, vec![Decoded::new("t", "a\nb", "1")]);
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].event, "t");
    assert_eq!(theirs[0].data, "a\nb");
    assert_eq!(theirs[0].id, "1");
    assert_eq!(theirs[0].retry, Some(Duration::from_millis(5)));
}

#[test]
fn eventsource_stream_deviations_are_real() {
    // Each deviation listed at `eventsource_decode`, shown against the spec decoder, so the
    // restrictions in the property tests below are justified and no wider than needed.

    // 1. retry in an event without data: the spec applies it, eventsource-stream drops it.
    let bytes = b"retry: 10\n\ndata: x\n\n";
    assert_eq!(decode(bytes).retry, Some(10));
    assert_eq!(eventsource_decode(&[&bytes[..]])[0].retry, None);

    // 2. retry above u64::MAX is ignored; `+5` is accepted.
    let big = format!("retry: {}0\ndata: x\n\n", u64::MAX);
    assert_eq!(
        decode(big.as_bytes()).retry,
        Some(u128::from(u64::MAX) * 10)
    );
    assert_eq!(eventsource_decode(&[big.as_bytes()])[0].retry, None);
    let plus = b"retry: +5\ndata: x\n\n";
    assert_eq!(decode(plus).retry, None);
    assert_eq!(
        eventsource_decode(&[&plus[..]])[0].retry,
        Some(Duration::from_millis(5))
    );

    // 3. A final lone CR as the blank line: the spec dispatches, eventsource-stream waits.
    let cr = b"data: x\r\r";
    assert_eq!(decode(cr).events, vec![msg("x", "")]);
    assert!(eventsource_decode(&[&cr[..]]).is_empty());
}

// ---- Generators ----------------------------------------------------------------------------

/// Pieces that stress the encoder: every line terminator and their combinations, leading
/// spaces, colons, things that look like fields, NUL, BOM, astral characters, bytes close to
/// CR and LF, and any Unicode scalar value.
fn data_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<char>().prop_map(String::from),
        3 => "[a-z ]{1,12}",
        2 => prop::sample::select(vec![
            "\r", "\n", "\r\n", "\n\r", "\r\r", "\n\n", "\r\n\r\n",
        ])
        .prop_map(String::from),
        2 => prop::sample::select(vec![
            " ", "  ", ":", ": ", "data: x", "event: e", "id: 1", "retry: 1", "\0",
            "\u{feff}", "\u{1f600}", "\u{10a}\u{10d}", "\u{85}\u{2028}", "\t",
        ])
        .prop_map(String::from),
    ]
}

/// Arbitrary data: any string at all, built from [`data_piece`]s.
fn data() -> impl Strategy<Value = String> {
    vec(data_piece(), 0..24).prop_map(|pieces| pieces.concat())
}

/// A piece of a single-line value: anything but CR and LF.
fn line_piece() -> impl Strategy<Value = String> {
    data_piece().prop_map(|s| s.replace(['\r', '\n'], ""))
}

/// A valid id: no control character (so no CR, LF or NUL either), at most 256 bytes; may be
/// empty.
fn valid_id() -> impl Strategy<Value = String> {
    vec(line_piece(), 0..6).prop_map(|p| p.concat().replace(char::is_control, ""))
}

/// Any candidate id: arbitrary strings, the pieces above (every control character class,
/// C1 U+0085, astral characters), and lengths around the 256-byte bound.
fn any_id() -> impl Strategy<Value = String> {
    let near_bound = (
        DEFAULT_MAX_LEN - 8..DEFAULT_MAX_LEN + 8,
        any::<char>(),
        any::<bool>(),
    )
        .prop_map(|(len, c, multibyte)| {
            let mut id = if multibyte {
                "é".repeat(len / 2)
            } else {
                "x".repeat(len)
            };
            id.push(c);
            id
        });
    prop_oneof![
        any::<String>(),
        vec(data_piece(), 0..8).prop_map(|p| p.concat()),
        "[\\x00-\\x20\\x7e-\\u{a0}]{0,4}",
        near_bound,
    ]
}

/// A valid event type: not empty, no CR or LF (NUL is fine).
fn valid_event_type() -> impl Strategy<Value = String> {
    vec(line_piece(), 1..6)
        .prop_map(|p| p.concat())
        .prop_filter("event type must not be empty", |s| !s.is_empty())
}

fn retry() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..100_000).prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        Just(Duration::ZERO),
        Just(Duration::MAX),
    ]
}

/// `s` with `insert` put at a character boundary chosen by `at`.
fn insert_at(s: &str, at: prop::sample::Index, insert: &str) -> String {
    let boundaries: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
    let at = boundaries[at.index(boundaries.len())];
    format!("{}{insert}{}", &s[..at], &s[at..])
}

/// Chunk boundaries for feeding the decoders.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    vec(any::<usize>(), 0..8)
}

/// One builder call.
#[derive(Debug, Clone)]
enum Op {
    Data(String),
    Event(String),
    Id(String),
    Retry(Duration),
    Comment(String),
}

fn apply(ops: &[Op]) -> Result<Event, EventError> {
    let mut builder = Event::builder();
    for op in ops {
        builder = match op {
            Op::Data(d) => builder.data(d),
            Op::Event(e) => builder.event(e),
            Op::Id(i) => builder.id(i),
            Op::Retry(r) => builder.retry(*r),
            Op::Comment(c) => builder.comment(c),
        };
    }
    builder.build()
}

/// The fields of one valid event.
#[derive(Debug, Clone, Default)]
struct Spec {
    data: Option<String>,
    event: Option<String>,
    id: Option<String>,
    retry: Option<Duration>,
}

/// A valid event's builder calls, each field at most once, in random order. With
/// `with_data`, data is always set (so the event is dispatched).
fn valid_event(with_data: bool) -> impl Strategy<Value = (Spec, Vec<Op>)> {
    let maybe_data = if with_data {
        data().prop_map(Some).boxed()
    } else {
        option::of(data()).boxed()
    };
    (
        maybe_data,
        option::of(valid_event_type()),
        option::of(valid_id()),
        option::of(retry()),
        vec(data(), 0..3),
    )
        .prop_filter("an event needs a field", |(d, e, i, r, c)| {
            d.is_some() || e.is_some() || i.is_some() || r.is_some() || !c.is_empty()
        })
        .prop_flat_map(|(data, event, id, retry, comments)| {
            let mut ops = Vec::new();
            ops.extend(data.clone().map(Op::Data));
            ops.extend(event.clone().map(Op::Event));
            ops.extend(id.clone().map(Op::Id));
            ops.extend(retry.map(Op::Retry));
            ops.extend(comments.into_iter().map(Op::Comment));
            let spec = Spec {
                data,
                event,
                id,
                retry,
            };
            (Just(spec), Just(ops).prop_shuffle())
        })
}

/// What a spec-following client must see after a stream of the given events.
fn expected(specs: &[Spec]) -> Output {
    let mut out = Output::default();
    for spec in specs {
        if let Some(id) = &spec.id {
            out.last_event_id = id.clone();
        }
        if let Some(retry) = spec.retry {
            out.retry = Some(retry.as_millis());
        }
        if let Some(data) = &spec.data {
            out.events.push(Decoded {
                event_type: spec.event.clone().unwrap_or_else(|| "message".into()),
                data: normalize(data),
                last_event_id: out.last_event_id.clone(),
            });
        }
    }
    out
}

/// Checks eventsource-stream against the spec model, where it follows the spec.
fn assert_eventsource_agrees(specs: &[Spec], chunks: &[&[u8]]) -> Result<(), TestCaseError> {
    let theirs = eventsource_decode(chunks);
    let want = expected(specs);
    prop_assert_eq!(theirs.len(), want.events.len());
    let dispatched = specs.iter().filter(|s| s.data.is_some());
    for ((got, want), spec) in theirs.iter().zip(&want.events).zip(dispatched) {
        prop_assert_eq!(&got.event, &want.event_type);
        prop_assert_eq!(&got.data, &want.data);
        prop_assert_eq!(&got.id, &want.last_event_id);
        // Deviations 1 and 2: retry only on this event's own field, and only up to u64.
        prop_assert_eq!(got.retry, eventsource_retry(spec.retry));
    }
    Ok(())
}

/// What `build` must answer for arbitrary builder calls, per the documented rules.
#[derive(Debug, PartialEq)]
enum Verdict {
    Ok,
    LineBreak(Field),
    Nul(Field),
    ControlCharacter(Field),
    TooLong(Field),
    Duplicate(Field),
    EmptyEventType,
    NoFields,
}

fn verdict(result: &Result<Event, EventError>) -> Verdict {
    match result {
        Ok(_) => Verdict::Ok,
        Err(EventError::LineBreak { field }) => Verdict::LineBreak(*field),
        Err(EventError::Nul { field }) => Verdict::Nul(*field),
        Err(EventError::ControlCharacter { field }) => Verdict::ControlCharacter(*field),
        Err(EventError::TooLong { field, .. }) => Verdict::TooLong(*field),
        Err(EventError::Duplicate { field }) => Verdict::Duplicate(*field),
        Err(EventError::EmptyEventType) => Verdict::EmptyEventType,
        Err(EventError::NoFields) => Verdict::NoFields,
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// The model: the first invalid call decides; otherwise the event is valid.
fn model(ops: &[Op]) -> (Verdict, Spec) {
    let mut spec = Spec::default();
    let mut retry_set = false;
    let line_break = |s: &str| s.contains(['\r', '\n']);
    for op in ops {
        match op {
            Op::Data(d) => {
                if spec.data.is_some() {
                    return (Verdict::Duplicate(Field::Data), spec);
                }
                spec.data = Some(d.clone());
            }
            Op::Event(e) => {
                if spec.event.is_some() {
                    return (Verdict::Duplicate(Field::Event), spec);
                }
                if e.is_empty() {
                    return (Verdict::EmptyEventType, spec);
                }
                if line_break(e) {
                    return (Verdict::LineBreak(Field::Event), spec);
                }
                spec.event = Some(e.clone());
            }
            Op::Id(i) => {
                if spec.id.is_some() {
                    return (Verdict::Duplicate(Field::Id), spec);
                }
                if i.len() > DEFAULT_MAX_LEN {
                    return (Verdict::TooLong(Field::Id), spec);
                }
                if line_break(i) {
                    return (Verdict::LineBreak(Field::Id), spec);
                }
                if i.contains('\0') {
                    return (Verdict::Nul(Field::Id), spec);
                }
                if i.contains(char::is_control) {
                    return (Verdict::ControlCharacter(Field::Id), spec);
                }
                spec.id = Some(i.clone());
            }
            Op::Retry(r) => {
                if retry_set {
                    return (Verdict::Duplicate(Field::Retry), spec);
                }
                retry_set = true;
                spec.retry = Some(*r);
            }
            Op::Comment(_) => {}
        }
    }
    if ops.is_empty() {
        return (Verdict::NoFields, spec);
    }
    (Verdict::Ok, spec)
}

/// Any builder call, valid or not, with values drawn to hit every rule often.
fn any_op() -> impl Strategy<Value = Op> {
    let short = prop_oneof![
        3 => vec(data_piece(), 0..4).prop_map(|p| p.concat()),
        1 => Just(String::new()),
    ];
    prop_oneof![
        data().prop_map(Op::Data),
        short.clone().prop_map(Op::Event),
        short.clone().prop_map(Op::Id),
        retry().prop_map(Op::Retry),
        short.prop_map(Op::Comment),
    ]
}

// ---- Properties ------------------------------------------------------------------------------

proptest! {
    /// One event round-trips exactly through the spec decoder, however the bytes are cut,
    /// and eventsource-stream agrees.
    #[test]
    fn single_event_round_trips((spec, ops) in valid_event(true), cuts in cuts()) {
        let event = apply(&ops).expect("valid input was rejected");
        let bytes = event.as_bytes();
        assert_one_well_formed_event(bytes);
        prop_assert_eq!(event.id(), spec.id.as_deref());

        let chunks = split_at_cuts(bytes, &cuts);
        let got = decode_chunks(chunks.iter().copied());
        let want = expected(std::slice::from_ref(&spec));
        prop_assert_eq!(&got, &want);
        // Spelled out, for the reader: exactly the input, CR/CRLF as LF.
        prop_assert_eq!(&got.events[0].data, &normalize(spec.data.as_deref().unwrap()));
        prop_assert_eq!(got.retry, spec.retry.map(|r| r.as_millis()));

        assert_eventsource_agrees(std::slice::from_ref(&spec), &chunks)?;
    }

    /// `Event::message(d)` is the same as the builder with only `data(d)`.
    #[test]
    fn message_is_builder_data(data in data(), cuts in cuts()) {
        let message = Event::message(&data);
        prop_assert_eq!(&message, &Event::builder().data(&data).build().unwrap());
        assert_one_well_formed_event(message.as_bytes());
        let chunks = split_at_cuts(message.as_bytes(), &cuts);
        let got = decode_chunks(chunks.iter().copied());
        prop_assert_eq!(got.events, vec![msg(&normalize(&data), "")]);
    }

    /// Comments never reach the client, whatever their text.
    #[test]
    fn comments_decode_to_nothing(text in data(), cuts in cuts()) {
        let comment = Event::comment(&text);
        assert_one_well_formed_event(comment.as_bytes());
        let chunks = split_at_cuts(comment.as_bytes(), &cuts);
        prop_assert_eq!(decode_chunks(chunks.iter().copied()), Output::default());
    }

    /// An id with CR, LF or NUL anywhere is an error, never a panic and never bytes.
    #[test]
    fn bad_id_is_rejected(
        id in valid_id(),
        at in any::<prop::sample::Index>(),
        bad in prop::sample::select(vec!["\r", "\n", "\r\n", "\0"]),
        data in option::of(data()),
    ) {
        let id = insert_at(&id, at, bad);
        let mut builder = Event::builder().id(&id);
        if let Some(data) = &data {
            builder = builder.data(data);
        }
        let want = if bad == "\0" { Verdict::Nul(Field::Id) } else { Verdict::LineBreak(Field::Id) };
        prop_assert_eq!(verdict(&builder.build()), want);
    }

    /// One rule for ids (issue 12): every id an event accepts, a reconnecting client can send
    /// back as `Last-Event-ID` and have it accepted, and every id `LastEventId` refuses, the
    /// encoder refuses too. An accepted id decodes to itself.
    #[test]
    fn ids_accepted_by_event_are_exactly_those_last_event_id_accepts(id in any_id()) {
        let built = Event::builder().id(&id).data("x").build();
        let parsed = LastEventId::parse(&id);
        prop_assert_eq!(built.is_ok(), parsed.is_ok(), "id {:?}: {:?} vs {:?}", id, built, parsed);
        if let (Ok(event), Ok(parsed)) = (built, parsed) {
            prop_assert_eq!(event.id(), Some(id.as_str()));
            prop_assert_eq!(decode(event.as_bytes()).last_event_id, id.clone());
            // An empty id resets the client's last event id, so it sends no header at all.
            prop_assert_eq!(parsed.as_ref().map(LastEventId::as_str), (!id.is_empty()).then_some(id.as_str()));
        }
    }

    /// An event type with CR or LF anywhere is an error.
    #[test]
    fn bad_event_type_is_rejected(
        event in valid_event_type(),
        at in any::<prop::sample::Index>(),
        bad in prop::sample::select(vec!["\r", "\n", "\r\n"]),
    ) {
        let event = insert_at(&event, at, bad);
        let result = Event::builder().event(&event).data("x").build();
        prop_assert_eq!(verdict(&result), Verdict::LineBreak(Field::Event));
    }

    /// Setting a single-valued field twice is an error, whatever else is set and in what
    /// order, even when both values are valid and equal.
    #[test]
    fn duplicates_are_rejected(
        (spec, ops) in valid_event(false),
        which in 0usize..4,
        at in any::<prop::sample::Index>(),
    ) {
        let (extra, field) = match which {
            0 => (Op::Data(spec.data.clone().unwrap_or_default()), Field::Data),
            1 => (Op::Event(spec.event.clone().unwrap_or_else(|| "e".into())), Field::Event),
            2 => (Op::Id(spec.id.clone().unwrap_or_default()), Field::Id),
            _ => (Op::Retry(spec.retry.unwrap_or_default()), Field::Retry),
        };
        let mut ops = ops;
        let at = at.index(ops.len() + 1);
        ops.insert(at, extra.clone());
        // Make sure the field is set twice even if the spec did not have it.
        ops.push(extra);
        prop_assert_eq!(verdict(&apply(&ops)), Verdict::Duplicate(field));
    }

    /// Arbitrary builder calls: `build` answers exactly what the documented rules say, and
    /// whatever it accepts decodes to what was asked.
    #[test]
    fn builder_follows_its_rules(ops in vec(any_op(), 0..7), cuts in cuts()) {
        let result = apply(&ops);
        let (want, spec) = model(&ops);
        prop_assert_eq!(verdict(&result), want);
        if let Ok(event) = result {
            assert_one_well_formed_event(event.as_bytes());
            let chunks = split_at_cuts(event.as_bytes(), &cuts);
            let got = decode_chunks(chunks.iter().copied());
            prop_assert_eq!(got, expected(std::slice::from_ref(&spec)));
        }
    }

    /// Several events written back to back, with heartbeats between some of them, decode to
    /// all the events in order; ids carry over, the last retry wins.
    #[test]
    fn streams_of_events_round_trip(
        events in vec((valid_event(false), any::<bool>()), 1..8),
        cuts in vec(any::<usize>(), 0..16),
    ) {
        let mut stream = Vec::new();
        let mut specs = Vec::new();
        for ((spec, ops), heartbeat) in events {
            stream.extend_from_slice(apply(&ops).expect("valid input was rejected").as_bytes());
            if heartbeat {
                stream.extend_from_slice(KEEP_ALIVE.as_bytes());
            }
            specs.push(spec);
        }
        let chunks = split_at_cuts(&stream, &cuts);
        prop_assert_eq!(decode_chunks(chunks.iter().copied()), expected(&specs));
        assert_eventsource_agrees(&specs, &chunks)?;
    }
}

// ---- JSON --------------------------------------------------------------------------------

#[cfg(feature = "json")]
mod json {
    use super::*;
    use serde_json::value::RawValue;
    use serde_json::Value;

    /// Any JSON value. Floats are multiples of 1/256, which print and parse exactly without
    /// serde_json's `float_roundtrip` feature, so equality tests the encoder, not float
    /// parsing.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-(1i32 << 24)..(1 << 24)).prop_map(|n| Value::from(f64::from(n) / 256.0)),
            data().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::Array),
                vec((data(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn decode_json(bytes: &[u8], cuts: &[usize]) -> (Output, Vec<eventsource_stream::Event>) {
        let chunks = split_at_cuts(bytes, cuts);
        (
            decode_chunks(chunks.iter().copied()),
            eventsource_decode(&chunks),
        )
    }

    proptest! {
        /// A JSON value survives encoding, decoding and parsing, and is one data line.
        #[test]
        fn json_values_round_trip(value in json_value(), cuts in cuts()) {
            let event = Event::builder().json_data(&value).build().unwrap();
            let bytes = event.as_bytes();
            assert_one_well_formed_event(bytes);
            prop_assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 2);
            let (ours, theirs) = decode_json(bytes, &cuts);
            prop_assert_eq!(ours.events.len(), 1);
            prop_assert_eq!(&ours.events[0].data, &serde_json::to_string(&value).unwrap());
            let back: Value = serde_json::from_str(&ours.events[0].data).unwrap();
            prop_assert_eq!(&back, &value);
            prop_assert_eq!(theirs.len(), 1);
            prop_assert_eq!(&theirs[0].data, &ours.events[0].data);
        }

        /// Pre-serialized JSON with line breaks of every kind between tokens (a `RawValue`)
        /// is split into data lines and still parses back to the same value.
        #[test]
        fn raw_json_with_line_breaks_round_trips(
            value in json_value(),
            breaks in vec(prop::sample::select(vec!["\n", "\r", "\r\n", "\r\n\r\n", " "]), 1..64),
            cuts in cuts(),
        ) {
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            let mut i = 0;
            let raw_text: String = pretty
                .split('\n')
                .enumerate()
                .map(|(n, part)| {
                    if n == 0 {
                        part.to_owned()
                    } else {
                        i += 1;
                        format!("{}{part}", breaks[i % breaks.len()])
                    }
                })
                .collect();
            let raw = RawValue::from_string(raw_text.clone()).unwrap();
            let event = Event::builder().event("j").json_data(&raw).build().unwrap();
            assert_one_well_formed_event(event.as_bytes());
            let (ours, theirs) = decode_json(event.as_bytes(), &cuts);
            prop_assert_eq!(ours.events.len(), 1);
            prop_assert_eq!(&ours.events[0].event_type, "j");
            prop_assert_eq!(&ours.events[0].data, &normalize(&raw_text));
            let back: Value = serde_json::from_str(&ours.events[0].data).unwrap();
            prop_assert_eq!(&back, &value);
            prop_assert_eq!(theirs.len(), 1);
            prop_assert_eq!(&theirs[0].data, &ours.events[0].data);
        }
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Quote {
        symbol: String,
        price: f64,
        note: Option<String>,
        tags: Vec<String>,
    }

    #[test]
    fn derived_struct_round_trips_with_other_fields() {
        let quote = Quote {
            symbol: "EUR/USD".into(),
            price: 1.0842,
            note: Some("line one\r\nline two\r: not a field\n".into()),
            tags: vec![" lead".into(), "\u{1f600}".into(), "\0".into()],
        };
        let event = Event::builder()
            .event("quote")
            .id("q-1")
            .json_data(&quote)
            .build()
            .unwrap();
        let json = serde_json::to_string(&quote).unwrap();
        assert_eq!(
            event.as_bytes(),
            format!("event: quote\nid: q-1\ndata: {json}\n\n").as_bytes()
        );
        let out = decode(event.as_bytes());
        assert_eq!(out.events, vec![Decoded::new("quote", &json, "q-1")]);
        let back: Quote = serde_json::from_str(&out.events[0].data).unwrap();
        assert_eq!(back, quote);
    }

    #[test]
    fn json_data_counts_as_data() {
        let err = Event::builder()
            .data("x")
            .json_data(&1)
            .build()
            .unwrap_err();
        assert!(matches!(err, EventError::Duplicate { field: Field::Data }));
        let err = Event::builder()
            .json_data(&1)
            .data("x")
            .build()
            .unwrap_err();
        assert!(matches!(err, EventError::Duplicate { field: Field::Data }));
    }

    #[test]
    fn unserializable_value_is_a_json_error_on_data() {
        use std::collections::BTreeMap;
        // serde_json refuses map keys that are not strings.
        let value: BTreeMap<Vec<u8>, u8> = [(vec![1], 1)].into();
        let err = Event::builder()
            .id("1")
            .json_data(&value)
            .build()
            .unwrap_err();
        assert!(matches!(err, EventError::Json(_)), "{err:?}");
        assert_eq!(err.field(), Some(Field::Data));
        assert!(std::error::Error::source(&err).is_some());
        assert!(err.to_string().contains("`data`"));
    }

    #[test]
    fn json_string_with_line_breaks_stays_one_line() {
        let event = Event::builder()
            .json_data("a\r\nb\u{2028}")
            .build()
            .unwrap();
        assert_eq!(event.as_bytes(), &b"data: \"a\\r\\nb\xe2\x80\xa8\"\n\n"[..]);
        let data = decode(event.as_bytes()).events.remove(0).data;
        assert_eq!(
            serde_json::from_str::<String>(&data).unwrap(),
            "a\r\nb\u{2028}"
        );
    }
}
