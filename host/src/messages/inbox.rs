//! One recipient's inbox in memory: the messages waiting for it, in three lanes.
//!
//! The store is the source of truth (every message here is committed as RECEIVED); this is the
//! queue the dispatcher serves from, rebuilt from the store at start. It is bounded: `pending`
//! counts every message of the recipient without an outcome (queued, being delivered, waiting
//! for a retry), and a send that would exceed the capacity is refused with BUFFER_FULL instead
//! of being dropped later.
//!
//! Lanes: PRIVILEGED is served next, but at most [`PRIVILEGED_BURST`] in a row while others
//! wait, so an urgent flood cannot starve standard traffic; BULK gets a turn after every
//! [`BULK_AFTER`] standard messages.

use std::collections::VecDeque;

use super::envelope::CommClass;

/// Privileged messages served in a row before a waiting lower lane gets one turn.
pub const PRIVILEGED_BURST: u32 = 4;

/// Standard messages served in a row before a waiting bulk message gets one turn.
pub const BULK_AFTER: u32 = 8;

/// A message waiting in an inbox: which copy and which attempt, and (for a small message just
/// accepted) the message itself, so its delivery need not read it back from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub id: String,
    pub attempt_id: String,
    pub class: CommClass,
    pub record: Option<std::sync::Arc<crate::store::MessageRecord>>,
}

#[derive(Debug, Default)]
pub struct Inbox {
    privileged: VecDeque<Queued>,
    standard: VecDeque<Queued>,
    bulk: VecDeque<Queued>,
    privileged_streak: u32,
    standard_streak: u32,
    /// Messages of this recipient without an outcome (queued, in delivery, awaiting retry).
    pub pending: usize,
    /// Deliveries running now (Wasm consumers) or streamed and not released (external).
    pub in_flight: usize,
}

impl Inbox {
    fn lane(&mut self, class: CommClass) -> &mut VecDeque<Queued> {
        match class {
            CommClass::Privileged => &mut self.privileged,
            CommClass::Standard => &mut self.standard,
            CommClass::Bulk => &mut self.bulk,
        }
    }

    /// Queues a message at the back of its lane.
    pub fn push(&mut self, queued: Queued) {
        let class = queued.class;
        self.lane(class).push_back(queued);
    }

    /// Puts a message back at the front of its lane (a stream closed before it was released).
    pub fn push_front(&mut self, queued: Queued) {
        let class = queued.class;
        self.lane(class).push_front(queued);
    }

    pub fn queued(&self) -> usize {
        self.privileged.len() + self.standard.len() + self.bulk.len()
    }

    /// The next message to serve, by the lane rules in the module doc.
    pub fn pop(&mut self) -> Option<Queued> {
        let others_wait = !self.standard.is_empty() || !self.bulk.is_empty();
        if !self.privileged.is_empty() && (self.privileged_streak < PRIVILEGED_BURST || !others_wait) {
            self.privileged_streak += 1;
            return self.privileged.pop_front();
        }
        self.privileged_streak = 0;
        if !self.standard.is_empty() && (self.standard_streak < BULK_AFTER || self.bulk.is_empty()) {
            self.standard_streak += 1;
            return self.standard.pop_front();
        }
        self.standard_streak = 0;
        self.bulk.pop_front().or_else(|| self.standard.pop_front())
    }

    /// Forgets a queued message (its attempt ended elsewhere, e.g. TTL expiry).
    pub fn remove(&mut self, id: &str) -> bool {
        for lane in [&mut self.privileged, &mut self.standard, &mut self.bulk] {
            if let Some(at) = lane.iter().position(|q| q.id == id) {
                lane.remove(at);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn q(id: &str, class: CommClass) -> Queued {
        Queued { id: id.to_owned(), attempt_id: id.to_owned(), class, record: None }
    }

    #[test]
    fn privileged_goes_first_but_cannot_starve_the_others() {
        let mut inbox = Inbox::default();
        for i in 0..10 {
            inbox.push(q(&format!("p{i}"), CommClass::Privileged));
        }
        inbox.push(q("s0", CommClass::Standard));
        inbox.push(q("b0", CommClass::Bulk));
        let order: Vec<String> = std::iter::from_fn(|| inbox.pop()).map(|q| q.id).collect();
        assert_eq!(order[..4], ["p0", "p1", "p2", "p3"]);
        assert_eq!(order[4], "s0", "a standard message gets its turn after a privileged burst");
        let standard_at = order.iter().position(|id| id == "s0").unwrap();
        let bulk_at = order.iter().position(|id| id == "b0").unwrap();
        assert!(bulk_at < 12 && standard_at < bulk_at, "{order:?}");
        assert_eq!(order.len(), 12);
    }

    #[test]
    fn bulk_gets_a_turn_among_standard_traffic() {
        let mut inbox = Inbox::default();
        for i in 0..20 {
            inbox.push(q(&format!("s{i}"), CommClass::Standard));
        }
        inbox.push(q("b0", CommClass::Bulk));
        let order: Vec<String> = std::iter::from_fn(|| inbox.pop()).map(|q| q.id).collect();
        assert_eq!(order.iter().position(|id| id == "b0"), Some(BULK_AFTER as usize));
    }

    #[test]
    fn a_returned_message_is_served_first_and_removal_works() {
        let mut inbox = Inbox::default();
        inbox.push(q("a", CommClass::Standard));
        inbox.push_front(q("b", CommClass::Standard));
        assert!(inbox.remove("a"));
        assert!(!inbox.remove("a"));
        assert_eq!(inbox.pop().map(|q| q.id).as_deref(), Some("b"));
        assert_eq!(inbox.pop(), None);
    }
}
