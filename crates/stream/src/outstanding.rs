//! The sender's side: frames sent (or to be sent) and not yet acknowledged.

use std::collections::{BTreeMap, BTreeSet};

/// Identifies one connection of a stream.
pub type LinkId = u64;

struct Entry<F> {
    frame: F,
    link: Option<LinkId>,
}

/// Frames not yet acknowledged, in sequence order, with the connection each
/// was last sent on (`None`: waiting to be sent).
pub struct Outstanding<F> {
    frames: BTreeMap<u64, Entry<F>>,
    /// Frames waiting for a connection, lowest first.
    unsent: BTreeSet<u64>,
}

impl<F> Default for Outstanding<F> {
    fn default() -> Self {
        Outstanding { frames: BTreeMap::new(), unsent: BTreeSet::new() }
    }
}

impl<F> Outstanding<F> {
    /// A new frame, waiting to be sent.
    pub fn add(&mut self, seq: u64, frame: F) {
        self.frames.insert(seq, Entry { frame, link: None });
        self.unsent.insert(seq);
    }

    /// The lowest frame waiting for a connection, now sent on `link`.
    pub fn send_next(&mut self, link: LinkId) -> Option<(u64, &F)> {
        let seq = self.unsent.pop_first()?;
        let entry = self.frames.get_mut(&seq).expect("unsent frames are outstanding");
        entry.link = Some(link);
        Some((seq, &entry.frame))
    }

    /// The lowest frame waiting for a connection.
    pub fn next_unsent(&self) -> Option<&F> {
        self.unsent.first().map(|seq| &self.frames[seq].frame)
    }

    /// Frame `seq` was delivered: forget it, and say which connection it was
    /// last sent on. `None` if it already was (a duplicate acknowledgement)
    /// or never existed.
    pub fn ack(&mut self, seq: u64) -> Option<(F, Option<LinkId>)> {
        self.unsent.remove(&seq);
        self.frames.remove(&seq).map(|e| (e.frame, e.link))
    }

    /// Connection `link` is gone: every frame on it waits to be sent again.
    /// Returns how many.
    pub fn orphan(&mut self, link: LinkId) -> usize {
        let mut n = 0;
        for (seq, entry) in self.frames.iter_mut() {
            if entry.link == Some(link) {
                entry.link = None;
                self.unsent.insert(*seq);
                n += 1;
            }
        }
        n
    }

    /// Number of frames not yet acknowledged.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether every frame was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_a_lost_connection_are_sent_again_lowest_first() {
        let mut o = Outstanding::default();
        for seq in 0..6 {
            o.add(seq, seq * 10);
        }
        for (link, _) in [(1, ()), (2, ()), (1, ()), (2, ()), (1, ())] {
            o.send_next(link).unwrap();
        }
        assert_eq!(o.ack(2), Some((20, Some(1))));
        assert_eq!(o.ack(2), None, "a duplicate acknowledgement changes nothing");
        assert_eq!(o.orphan(1), 2, "frames 0 and 4 were on link 1 and are not acknowledged");
        assert_eq!(o.send_next(3).map(|(s, _)| s), Some(0));
        assert_eq!(o.send_next(3).map(|(s, _)| s), Some(4));
        assert_eq!(o.send_next(3).map(|(s, _)| s), Some(5));
        assert!(o.next_unsent().is_none());
        assert_eq!(o.len(), 5);
        for seq in [0, 1, 3, 4, 5] {
            assert!(o.ack(seq).is_some());
        }
        assert!(o.is_empty());
    }
}
