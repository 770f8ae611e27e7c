//! Tracks where an inner body's bytes stand relative to event boundaries, so a heartbeat or a
//! farewell is only ever written between two events, never inside one.

/// Position in the event stream grammar after the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// At the start of the stream, or just after a blank line: between events.
    Boundary,
    /// At the start of a line inside an event.
    LineStart,
    /// Inside a line.
    InLine,
}

/// Only the bytes after a frame's last non-terminator matter, so an update costs the length
/// of the frame's trailing run of CR and LF, not the length of the frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BoundaryTracker {
    position: Position,
    /// The last byte was CR: a following LF belongs to the same CRLF terminator.
    after_cr: bool,
}

impl Default for BoundaryTracker {
    fn default() -> Self {
        BoundaryTracker {
            position: Position::Boundary,
            after_cr: false,
        }
    }
}

impl BoundaryTracker {
    pub(crate) fn at_boundary(&self) -> bool {
        self.position == Position::Boundary
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        let tail = match data.iter().rposition(|&b| b != b'\n' && b != b'\r') {
            Some(last) => {
                self.position = Position::InLine;
                self.after_cr = false;
                &data[last + 1..]
            }
            None => data,
        };
        for &b in tail {
            if self.after_cr && b == b'\n' {
                self.after_cr = false;
                continue;
            }
            self.after_cr = b == b'\r';
            self.position = match self.position {
                Position::InLine => Position::LineStart,
                Position::LineStart | Position::Boundary => Position::Boundary,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(chunks: &[&[u8]]) -> bool {
        let mut t = BoundaryTracker::default();
        for c in chunks {
            t.update(c);
        }
        t.at_boundary()
    }

    #[test]
    fn boundaries() {
        assert!(after(&[]));
        assert!(after(&[b"data: x\n\n"]));
        assert!(after(&[b"data: x\r\n\r\n"]));
        assert!(after(&[b"data: x\r\r"]));
        assert!(after(&[b"data: x\n", b"\n"]));
        assert!(after(&[b"data: x\r", b"\n", b"\r\n"]));
        assert!(!after(&[b"data: x\n"]));
        assert!(!after(&[b"data: x"]));
        assert!(!after(&[b"data: x\r\n"]));
        // CRLF split across frames is one terminator, not a blank line.
        assert!(!after(&[b"data: x\r", b"\n"]));
        assert!(!after(&[b"data: x\n\n", b"data: y"]));
        assert!(!after(&[b"data: x\n\n", b"data: y\n"]));
        assert!(after(&[b"data: x\n\n", b"data: y\n", b"\n"]));
        // Blank lines between events keep us at a boundary.
        assert!(after(&[b"\n\n\r\n"]));
    }
}
