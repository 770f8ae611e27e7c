//! Tests of the test decoder in `common/whatwg.rs` itself, with hand-written bytes: the
//! examples of the WHATWG spec (section 9.2.4/9.2.6) and one case per parsing rule. The wire
//! format tests are only as good as this decoder, so it is checked on its own first.

mod common;

use common::whatwg::{decode, decode_chunks, split_at_cuts, Decoded, Decoder, Output};

fn events(bytes: &[u8]) -> Vec<Decoded> {
    decode(bytes).events
}

fn msg(data: &str) -> Decoded {
    Decoded::new("message", data, "")
}

/// Decodes `bytes` whole, byte by byte, and cut at every single position and every pair of
/// positions, and checks all of them agree.
fn decode_every_way(bytes: &[u8]) -> Output {
    let whole = decode(bytes);
    let bytewise = decode_chunks(bytes.chunks(1));
    assert_eq!(bytewise, whole, "byte by byte");
    for i in 0..=bytes.len() {
        let (a, b) = bytes.split_at(i);
        assert_eq!(decode_chunks([a, b]), whole, "cut at {i}");
        for j in i..=bytes.len() {
            let chunks = split_at_cuts(bytes, &[i, j]);
            assert_eq!(decode_chunks(chunks), whole, "cuts at {i}, {j}");
        }
    }
    whole
}

// ---- The spec's own examples -------------------------------------------------------------

#[test]
fn spec_example_stock_ticker() {
    // "data: YHOO / data: +2 / data: 10" fires one message "YHOO\n+2\n10".
    let out = decode_every_way(b"data: YHOO\ndata: +2\ndata: 10\n\n");
    assert_eq!(out.events, vec![msg("YHOO\n+2\n10")]);
}

#[test]
fn spec_example_four_blocks_with_ids() {
    let stream = b": test stream\n\
\n\
data: first event\n\
id: 1\n\
\n\
data:second event\n\
id\n\
\n\
data:  third event\n";
    // The last block is not followed by a blank line, so it is not dispatched: "the end of
    // the stream is not enough to trigger the dispatch of the last event".
    let out = decode_every_way(stream);
    assert_eq!(
        out.events,
        vec![
            Decoded::new("message", "first event", "1"),
            Decoded::new("message", "second event", ""),
        ]
    );
    // The same with the final blank line: " third event" keeps its second space.
    let mut terminated = stream.to_vec();
    terminated.push(b'\n');
    let out = decode_every_way(&terminated);
    assert_eq!(out.events[2], msg(" third event"));
    assert_eq!(out.events.len(), 3);
}

#[test]
fn spec_example_empty_data_and_double_newline() {
    // "The first block fires events with the data set to the empty string, as would the last
    // block if it was followed by a blank line. The middle block fires an event with the
    // data set to a single newline character."
    let out = decode_every_way(b"data\n\ndata\ndata\n\ndata:\n");
    assert_eq!(out.events, vec![msg(""), msg("\n")]);
}

#[test]
fn spec_example_space_after_colon_is_optional() {
    // "The following stream fires two identical events".
    let out = decode_every_way(b"data:test\n\ndata: test\n\n");
    assert_eq!(out.events, vec![msg("test"), msg("test")]);
}

#[test]
fn spec_example_three_messages_and_typed_events() {
    let out = decode(
        b"data: This is the first message.\n\n\
data: This is the second message, it\n\
data: has two lines.\n\n\
data: This is the third message.\n\n",
    );
    assert_eq!(
        out.events,
        vec![
            msg("This is the first message."),
            msg("This is the second message, it\nhas two lines."),
            msg("This is the third message."),
        ]
    );
    let out = decode(
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
    );
    assert_eq!(
        out.events,
        vec![
            Decoded::new("add", "73857293", ""),
            Decoded::new("remove", "2153", ""),
            Decoded::new("add", "113411", ""),
        ]
    );
}

// ---- Line terminators --------------------------------------------------------------------

#[test]
fn crlf_lf_and_lone_cr_each_end_a_line() {
    let out = decode_every_way(b"data: a\r\ndata: b\rdata: c\n\r\n");
    assert_eq!(out.events, vec![msg("a\nb\nc")]);
    // LF CR is two terminators, so here the CR is the blank line.
    assert_eq!(events(b"data: a\n\r"), vec![msg("a")]);
    // CR CR is two terminators as well.
    assert_eq!(events(b"data: a\r\r"), vec![msg("a")]);
    // CR LF CR LF: one line, then a blank line.
    assert_eq!(events(b"data: a\r\n\r\n"), vec![msg("a")]);
}

#[test]
fn crlf_split_across_chunks_is_one_terminator() {
    // If the LF after a chunk-final CR were a second terminator, it would be a blank line
    // and dispatch "a" early, before "b" is appended.
    let out = decode_chunks([&b"data: a\r"[..], b"\ndata: b\r", b"\n\r", b"\n"]);
    assert_eq!(out.events, vec![msg("a\nb")]);
}

#[test]
fn cr_at_chunk_end_followed_by_other_byte() {
    let out = decode_chunks([&b"data: a\r"[..], b"data: b\r", b"\r"]);
    assert_eq!(out.events, vec![msg("a\nb")]);
}

// ---- BOM and UTF-8 -----------------------------------------------------------------------

#[test]
fn one_leading_bom_is_stripped() {
    let out = decode_every_way("\u{feff}data: x\n\n".as_bytes());
    assert_eq!(out.events, vec![msg("x")]);
    // A second BOM is part of the first field name, so that field is unknown and ignored.
    let out = decode("\u{feff}\u{feff}data: x\n\ndata: y\n\n".as_bytes());
    assert_eq!(out.events, vec![msg("y")]);
    // A BOM later in the stream is ordinary text.
    let out = decode("data: \u{feff}x\n\n".as_bytes());
    assert_eq!(out.events, vec![msg("\u{feff}x")]);
}

#[test]
fn bom_split_across_chunks_and_short_streams() {
    let bytes = "\u{feff}data: x\n\n".as_bytes();
    let out = decode_chunks([&bytes[..1], &bytes[1..2], &[], &bytes[2..]]);
    assert_eq!(out.events, vec![msg("x")]);
    // A stream that is only part of a BOM, or empty, decodes to nothing.
    assert_eq!(decode(&bytes[..2]), Output::default());
    assert_eq!(decode(b""), Output::default());
    // Bytes that start like a BOM but are not one are kept (and decoded lossily).
    let out = decode(b"\xef\xbbdata: x\n\ndata: y\n\n");
    assert_eq!(out.events, vec![msg("y")]);
}

#[test]
fn multi_byte_characters_split_across_chunks() {
    let bytes = "data: h\u{e9}llo \u{1f600}\n\n".as_bytes();
    let out = decode_every_way(bytes);
    assert_eq!(out.events, vec![msg("h\u{e9}llo \u{1f600}")]);
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    let out = decode(b"data: a\xffb\xf0\x9f\n\n");
    assert_eq!(out.events, vec![msg("a\u{fffd}b\u{fffd}")]);
}

// ---- Fields ------------------------------------------------------------------------------

#[test]
fn only_one_space_after_the_colon_is_stripped() {
    assert_eq!(events(b"data:   x\n\n"), vec![msg("  x")]);
    assert_eq!(events(b"data:\tx\n\n"), vec![msg("\tx")]);
    assert_eq!(events(b"event:  t\ndata: x\n\n")[0].event_type, " t");
}

#[test]
fn value_is_everything_after_the_first_colon() {
    assert_eq!(events(b"data: a: b:c\n\n"), vec![msg("a: b:c")]);
    assert_eq!(events(b"data::\n\n"), vec![msg(":")]);
}

#[test]
fn field_without_colon_has_empty_value() {
    assert_eq!(events(b"data\n\n"), vec![msg("")]);
    // `event` with no colon sets the type to "", which dispatches as message.
    assert_eq!(events(b"event: x\nevent\ndata: y\n\n"), vec![msg("y")]);
}

#[test]
fn comments_and_unknown_fields_are_ignored() {
    assert_eq!(events(b": hi\n:\ndata: x\n: there\n\n"), vec![msg("x")]);
    assert_eq!(
        events(b"foo: bar\ndata: x\nbar\n \ndata : y\n\n"),
        vec![msg("x")]
    );
}

#[test]
fn field_names_are_case_sensitive() {
    assert_eq!(events(b"Data: x\nDATA: y\n\ndata: z\n\n"), vec![msg("z")]);
    let out = decode(b"ID: 5\nEvent: e\nRetry: 5\ndata: x\n\n");
    assert_eq!(out.events, vec![msg("x")]);
    assert_eq!(out.retry, None);
}

#[test]
fn event_type_resets_after_each_dispatch() {
    let out = decode(b"event: a\ndata: 1\n\ndata: 2\n\n");
    assert_eq!(out.events, vec![Decoded::new("a", "1", ""), msg("2")]);
    // Also when the dispatch fires nothing (empty data buffer, step 2).
    let out = decode(b"event: a\n\ndata: 2\n\n");
    assert_eq!(out.events, vec![msg("2")]);
    // The last `event` field wins.
    let out = decode(b"event: a\nevent: b\ndata: 3\n\n");
    assert_eq!(out.events, vec![Decoded::new("b", "3", "")]);
}

#[test]
fn explicit_empty_event_type_is_message() {
    assert_eq!(events(b"event:\ndata: x\n\n"), vec![msg("x")]);
    assert_eq!(events(b"event: \ndata: x\n\n"), vec![msg("x")]);
}

// ---- id ----------------------------------------------------------------------------------

#[test]
fn id_carries_over_and_empty_id_resets() {
    let out =
        decode(b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 2\ndata: d\n\nid:\ndata: e\n\n");
    assert_eq!(
        out.events,
        vec![
            Decoded::new("message", "a", "1"),
            Decoded::new("message", "b", "1"),
            Decoded::new("message", "c", ""),
            Decoded::new("message", "d", "2"),
            Decoded::new("message", "e", ""),
        ]
    );
}

#[test]
fn id_with_nul_is_ignored() {
    let out = decode(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n");
    assert_eq!(out.events[1], Decoded::new("message", "b", "1"));
    assert_eq!(out.last_event_id, "1");
}

#[test]
fn id_without_data_sets_last_event_id_but_dispatches_nothing() {
    let out = decode(b"id: 7\n\ndata: x\n\n");
    assert_eq!(out.events, vec![Decoded::new("message", "x", "7")]);
    let out = decode(b"id: 7\n\n");
    assert!(out.events.is_empty());
    assert_eq!(out.last_event_id, "7");
}

#[test]
fn id_in_partial_event_at_eof_does_not_apply() {
    let out = decode(b"id: 1\ndata: a\n\nid: 2\ndata: b\n");
    assert_eq!(out.events, vec![Decoded::new("message", "a", "1")]);
    assert_eq!(out.last_event_id, "1");
}

#[test]
fn id_keeps_spaces_and_colons() {
    let out = decode(b"id:  a:b \ndata: x\n\n");
    assert_eq!(out.events[0].last_event_id, " a:b ");
}

// ---- retry -------------------------------------------------------------------------------

#[test]
fn retry_accepts_only_ascii_digits() {
    assert_eq!(decode(b"retry: 1500\n").retry, Some(1500));
    assert_eq!(decode(b"retry:0\n").retry, Some(0));
    assert_eq!(decode(b"retry: 007\n").retry, Some(7));
    for bad in [
        &b"retry: +5\n"[..],
        b"retry: -5\n",
        b"retry: 1.5\n",
        b"retry: 1e3\n",
        b"retry:  5\n",
        b"retry: 5 \n",
        b"retry: \xd9\xa5\n", // ARABIC-INDIC DIGIT FIVE is not an ASCII digit
        b"retry:\n",
        b"retry\n",
    ] {
        assert_eq!(
            decode(bad).retry,
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // An invalid value leaves the previous reconnection time in place.
    assert_eq!(decode(b"retry: 10\nretry: x\n").retry, Some(10));
}

#[test]
fn retry_applies_without_dispatch_and_even_at_eof() {
    // The reconnection time is set when the field is processed, not on dispatch.
    let out = decode(b"retry: 3000\n");
    assert_eq!(out.retry, Some(3000));
    assert!(out.events.is_empty());
    // But only for complete lines.
    assert_eq!(decode(b"retry: 3000").retry, None);
}

#[test]
fn retry_beyond_u64_is_kept() {
    let big = format!("retry: {}\n", u128::from(u64::MAX) * 1000);
    assert_eq!(
        decode(big.as_bytes()).retry,
        Some(u128::from(u64::MAX) * 1000)
    );
}

// ---- Dispatch and end of stream ----------------------------------------------------------

#[test]
fn partial_event_and_unterminated_line_at_eof_are_discarded() {
    assert!(events(b"data: x\n").is_empty());
    assert!(events(b"data: x").is_empty());
    assert!(events(b"data: x\n\ndata: y").len() == 1);
}

#[test]
fn final_lf_only_once_removed() {
    assert_eq!(events(b"data: a\ndata:\n\n"), vec![msg("a\n")]);
    assert_eq!(events(b"data:\ndata:\n\n"), vec![msg("\n")]);
}

#[test]
fn blank_lines_alone_dispatch_nothing() {
    assert!(events(b"\n\n\r\n\r\r").is_empty());
}

#[test]
fn events_are_delivered_as_soon_as_their_blank_line_arrives() {
    let mut decoder = Decoder::new();
    decoder.feed(b"data: a\n");
    assert!(decoder.take_events().is_empty());
    decoder.feed(b"\nid: 9\nretry: 5\ndata: b");
    assert_eq!(decoder.take_events(), vec![msg("a")]);
    assert_eq!(decoder.retry(), Some(5));
    assert_eq!(decoder.last_event_id(), "");
    decoder.feed(b"\n\n");
    assert_eq!(decoder.last_event_id(), "9");
    let out = decoder.finish();
    assert_eq!(out.events, vec![Decoded::new("message", "b", "9")]);
    assert_eq!(out.last_event_id, "9");
}

#[test]
fn split_at_cuts_covers_the_input() {
    let bytes = b"abcdef";
    let chunks = split_at_cuts(bytes, &[4, 1, 1, 100, 6]);
    assert_eq!(chunks.concat(), bytes);
    assert_eq!(chunks.len(), 6);
    assert_eq!(split_at_cuts(b"", &[3]), vec![&b""[..], &b""[..]]);
}
