//! The checker for what a client received through a backplane: every published event has a
//! broker id `EPOCH-N`, and a client must see them as one contiguous run of `N` per epoch,
//! with an explicit gap event at each discontinuity. Never a hole, never a duplicate.
//!
//! `tests/backplane.rs` tests the checker itself on a hole, a duplicate and the other ways
//! a sequence can be wrong, so a passing check is known to mean something.

use std::collections::HashSet;

/// The event type of the manager's default gap event.
pub const GAP: &str = "gap";

/// What a correct sequence contained.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Published events (every entry but the gap events).
    pub events: usize,
    /// Gap events.
    pub gaps: usize,
    /// The first and last published ids, as `(epoch, n)`.
    pub first: Option<(String, u64)>,
    pub last: Option<(String, u64)>,
    /// Every epoch seen, in order.
    pub epochs: Vec<String>,
}

fn parse(id: &str) -> Option<(String, u64)> {
    let (epoch, n) = id.rsplit_once('-')?;
    if epoch.is_empty() {
        return None;
    }
    Some((epoch.to_owned(), n.parse().ok()?))
}

/// Checks `received`, the `(id, event type)` of every published event and gap event one
/// client received, in order. Events of type [`GAP`] are gap events (their id is ignored);
/// every other entry must carry a broker id `EPOCH-N`.
///
/// Holds if, between any two consecutive published events:
/// - with no gap event between them, the second is the next number of the same epoch;
/// - with a gap event between them, the second is later in the same epoch, or in a new one;
///
/// and no id is seen twice, and no epoch comes back after another one.
///
/// # Errors
///
/// A message that names the first place where the sequence is wrong.
pub fn check(received: &[(String, String)]) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let mut seen = HashSet::new();
    let mut prev: Option<(String, u64)> = None;
    let mut gap_since_prev = false;
    for (i, (id, event_type)) in received.iter().enumerate() {
        if event_type == GAP {
            summary.gaps += 1;
            gap_since_prev = true;
            continue;
        }
        let cur = parse(id).ok_or_else(|| format!("entry {i}: {id:?} is not an EPOCH-N id"))?;
        if !seen.insert(cur.clone()) {
            return Err(format!("entry {i}: duplicate {id}"));
        }
        if summary.epochs.last() != Some(&cur.0) {
            if summary.epochs.contains(&cur.0) {
                return Err(format!("entry {i}: epoch {} came back in {id}", cur.0));
            }
            summary.epochs.push(cur.0.clone());
        }
        if let Some((epoch, n)) = &prev {
            let same_epoch = *epoch == cur.0;
            if same_epoch && cur.1 <= *n {
                return Err(format!("entry {i}: {id} after {epoch}-{n}, out of order"));
            }
            let next = same_epoch && cur.1 == n + 1;
            if !next && !gap_since_prev {
                return Err(format!(
                    "entry {i}: hole between {epoch}-{n} and {id} with no gap event"
                ));
            }
        }
        summary.events += 1;
        summary.first.get_or_insert_with(|| cur.clone());
        summary.last = Some(cur.clone());
        prev = Some(cur);
        gap_since_prev = false;
    }
    Ok(summary)
}
