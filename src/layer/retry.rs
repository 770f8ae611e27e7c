//! Finds where the layer's `retry:` line goes in an inner body's bytes: inside the stream's
//! first event that has a `data` line, so that it never forms a block of its own (several
//! clients ignore a `retry` in a block without data, or surface that block as an empty
//! message).
//!
//! The line goes right before the first data line when that line starts in the frame at
//! hand, which is the case for every body whose frames hold whole events. When the data
//! line began in an earlier frame (already written), it goes right after that line's
//! terminator instead: still inside the same event, before the blank line that dispatches
//! it. Field order within an event means nothing to clients.
//!
//! The scan stops for good at the first data line, so a stream pays for it only until then.

/// Where the scan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// At the start of a line.
    LineStart,
    /// The current line starts with this many bytes of `data` (1 to 4).
    Name(u8),
    /// Inside a line that is not a data line.
    Other,
    /// Inside the first data line, which began in an earlier frame: insert after it.
    DataLine,
    /// The first data line ended with a CR at the very end of a frame: insert after it, or
    /// after the LF that may follow.
    DataLineCr,
    /// Inserted: nothing more to do.
    Done,
}

/// The scanner. See the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPlacement {
    scan: Scan,
    /// The last byte was a CR: an LF right after it belongs to the same terminator.
    after_cr: bool,
}

impl Default for RetryPlacement {
    fn default() -> Self {
        RetryPlacement {
            scan: Scan::LineStart,
            after_cr: false,
        }
    }
}

const DATA: &[u8; 4] = b"data";

impl RetryPlacement {
    /// Reads the next frame of the inner body; returns the offset in it where the retry line
    /// goes, if it goes in this frame. After it returned `Some`, it always returns `None`.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Option<usize> {
        if data.is_empty() {
            return None;
        }
        if self.scan == Scan::DataLineCr {
            self.scan = Scan::Done;
            return Some(usize::from(data[0] == b'\n'));
        }
        // Where the current line started, if in this frame.
        let mut line_start = None;
        for (i, &b) in data.iter().enumerate() {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                // The LF of a CRLF: still at the start of the line that follows.
                continue;
            }
            let line_end = b == b'\n' || b == b'\r';
            self.scan = match self.scan {
                Scan::LineStart => {
                    line_start = Some(i);
                    if b == DATA[0] {
                        Scan::Name(1)
                    } else if line_end {
                        Scan::LineStart
                    } else {
                        Scan::Other
                    }
                }
                Scan::Name(4) if b == b':' || line_end => match line_start {
                    // A data line (`data:` or a bare `data`) that starts in this frame.
                    Some(start) => {
                        self.scan = Scan::Done;
                        return Some(start);
                    }
                    None if b == b':' => Scan::DataLine,
                    None => return self.after_data_line(data, i),
                },
                Scan::Name(n) if n < 4 && b == DATA[n as usize] => Scan::Name(n + 1),
                Scan::DataLine if line_end => return self.after_data_line(data, i),
                Scan::DataLine => Scan::DataLine,
                Scan::Name(_) | Scan::Other if line_end => Scan::LineStart,
                Scan::Name(_) | Scan::Other => Scan::Other,
                Scan::DataLineCr | Scan::Done => return None,
            };
            self.after_cr = b == b'\r';
        }
        None
    }

    /// The first data line ends with the terminator at `data[i]`: the offset right after it.
    fn after_data_line(&mut self, data: &[u8], i: usize) -> Option<usize> {
        if data[i] == b'\r' {
            match data.get(i + 1) {
                Some(b'\n') => {
                    self.scan = Scan::Done;
                    Some(i + 2)
                }
                Some(_) => {
                    self.scan = Scan::Done;
                    Some(i + 1)
                }
                // Is an LF next? The next frame will tell.
                None => {
                    self.scan = Scan::DataLineCr;
                    None
                }
            }
        } else {
            self.scan = Scan::Done;
            Some(i + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `frames`; returns (frame index, offset) of the placement.
    fn place(frames: &[&[u8]]) -> Option<(usize, usize)> {
        let mut p = RetryPlacement::default();
        for (n, frame) in frames.iter().enumerate() {
            if let Some(at) = p.feed(frame) {
                assert_eq!(p.scan, Scan::Done);
                assert_eq!(p.feed(b"data: again\n\n"), None, "placed once");
                return Some((n, at));
            }
        }
        None
    }

    #[test]
    fn before_a_data_line_in_the_same_frame() {
        assert_eq!(place(&[b"data: x\n\n"]), Some((0, 0)));
        assert_eq!(place(&[b"event: a\ndata: x\n\n"]), Some((0, 9)));
        assert_eq!(place(&[b": hi\n\nid: 1\n\ndata\n\n"]), Some((0, 13)));
        assert_eq!(place(&[b"id: 1\r\ndata:x\r\n\r\n"]), Some((0, 7)));
        assert_eq!(place(&[b"id: 1\rdata:x\r\r"]), Some((0, 6)));
        assert_eq!(place(&[b": c\n\n", b"data: y\n\n"]), Some((1, 0)));
        // A CRLF split across frames: the line starts after the LF.
        assert_eq!(place(&[b"id: 1\r", b"\ndata: y\n\n"]), Some((1, 1)));
    }

    #[test]
    fn not_data_lines() {
        assert_eq!(place(&[b"database: x\n\n", b"dat\n", b"datum: 1\n"]), None);
        assert_eq!(place(&[b": data: in a comment\n\n"]), None);
        assert_eq!(place(&[b"id: data\nevent: data\n\n"]), None);
        assert_eq!(place(&[b" data: leading space\n\n"]), None);
        assert_eq!(place(&[b"Data: case matters\n\n"]), None);
    }

    #[test]
    fn after_a_data_line_that_began_in_an_earlier_frame() {
        assert_eq!(place(&[b"da", b"ta: x\n\n"]), Some((1, 6)));
        assert_eq!(place(&[b"data", b": x\n\n"]), Some((1, 4)));
        assert_eq!(place(&[b"data", b"\n\n"]), Some((1, 1)));
        assert_eq!(place(&[b"data", b"\r\n\r\n"]), Some((1, 2)));
        assert_eq!(place(&[b"data", b": x", b"y\r", b"\n\n"]), Some((3, 1)));
        assert_eq!(place(&[b"data", b": x", b"y\r", b"\r"]), Some((3, 0)));
        assert_eq!(place(&[b"data", b": xy\r"]), None);
        assert_eq!(place(&[b"data", b": x", b"\n"]), Some((2, 1)));
    }

    #[test]
    fn empty_frames_change_nothing() {
        assert_eq!(place(&[b"", b"da", b"", b"ta: x\n\n"]), Some((3, 6)));
        assert_eq!(place(&[b"data: x\r", b"", b"\n"]), Some((0, 0)));
    }
}
