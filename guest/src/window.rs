//! The messages of a concurrent input binding (metadata `concurrency`) from the moment they
//! are taken to the moment they are acknowledged. Deliveries end in any order; the
//! acknowledgements leave in the order the messages arrived, as MQTT requires (3.1.1
//! section 4.6: PUBACKs in the order of the PUBLISHes), so a message is acknowledged only
//! when it and every message before it are settled. Pure bookkeeping.

use std::collections::VecDeque;

/// Messages taken and not yet released, oldest first.
#[derive(Debug, Default)]
pub struct Window {
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    /// `None` while in delivery; `Some(true)` to acknowledge, `Some(false)` to leave
    /// unacknowledged for the broker to send again.
    settled: Option<bool>,
}

impl Window {
    /// Takes a message into the window, behind every earlier one.
    pub fn push(&mut self, id: u64) {
        self.entries.push_back(Entry { id, settled: None });
    }

    /// Records how a message's delivery ended: `acknowledge` or leave it.
    pub fn settle(&mut self, id: u64, acknowledge: bool) {
        if let Some(entry) = self.entries.iter_mut().find(|entry| entry.id == id) {
            entry.settled = Some(acknowledge);
        }
    }

    /// Releases the settled messages at the front, in order, each with whether to
    /// acknowledge it.
    pub fn release(&mut self) -> Vec<(u64, bool)> {
        let mut released = Vec::new();
        while let Some(settled) = self.entries.front().and_then(|entry| entry.settled) {
            let entry = self.entries.pop_front().expect("a front entry");
            released.push((entry.id, settled));
        }
        released
    }

    /// Messages taken and not yet released, settled or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_leave_in_arrival_order() {
        let mut window = Window::default();
        for id in 1..=4 {
            window.push(id);
        }
        window.settle(3, true);
        window.settle(2, true);
        assert_eq!(window.release(), [], "1 is still in delivery");
        window.settle(1, true);
        assert_eq!(window.release(), [(1, true), (2, true), (3, true)]);
        assert_eq!(window.len(), 1);
        window.settle(4, true);
        assert_eq!(window.release(), [(4, true)]);
        assert!(window.is_empty());
    }

    #[test]
    fn a_message_left_unacknowledged_is_released_without_an_acknowledgement() {
        let mut window = Window::default();
        for id in 1..=3 {
            window.push(id);
        }
        window.settle(2, false);
        window.settle(3, true);
        window.settle(1, true);
        assert_eq!(window.release(), [(1, true), (2, false), (3, true)]);
    }

    #[test]
    fn an_unsettled_message_holds_back_everything_after_it() {
        let mut window = Window::default();
        for id in 1..=3 {
            window.push(id);
        }
        window.settle(2, true);
        window.settle(3, true);
        assert!(window.release().is_empty());
        assert_eq!(window.len(), 3, "nothing released past the unsettled one");
    }
}
