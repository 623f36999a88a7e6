//! The receiver's side: frames arrive in any order over any connection, and
//! leave in sequence order, each exactly once.

use std::collections::BTreeMap;

/// What became of an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Kept until its turn.
    Held,
    /// Already written out: acknowledge it again (the first acknowledgement
    /// may have been lost with its connection).
    AlreadyDelivered,
    /// Already held: nothing to do.
    AlreadyHeld,
    /// Holding it would exceed the buffer: the sender ignores its window.
    OverLimit,
}

/// Frames waiting for their turn.
pub struct Reorder<T> {
    next: u64,
    held: BTreeMap<u64, (T, usize)>,
    held_bytes: usize,
    limit: usize,
}

impl<T> Reorder<T> {
    /// Allows at least `limit` bytes out of turn from now on.
    pub fn raise_limit(&mut self, limit: usize) {
        self.limit = self.limit.max(limit);
    }

    /// A buffer holding at most `limit` bytes of frames out of turn (the
    /// next frame in order is always accepted).
    pub fn new(limit: usize) -> Self {
        Reorder { next: 0, held: BTreeMap::new(), held_bytes: 0, limit }
    }

    /// Offers frame `seq` of `size` bytes.
    pub fn offer(&mut self, seq: u64, frame: T, size: usize) -> Offer {
        if seq < self.next {
            return Offer::AlreadyDelivered;
        }
        if self.held.contains_key(&seq) {
            return Offer::AlreadyHeld;
        }
        if seq != self.next && self.held_bytes + size > self.limit {
            return Offer::OverLimit;
        }
        self.held_bytes += size;
        self.held.insert(seq, (frame, size));
        Offer::Held
    }

    /// The next frame in order, if it has arrived.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        let (frame, size) = self.held.remove(&self.next)?;
        self.held_bytes -= size;
        self.next += 1;
        Some((self.next - 1, frame))
    }

    /// Whether frame `seq` was already handed out by [`Reorder::pop`].
    pub fn delivered(&self, seq: u64) -> bool {
        seq < self.next
    }

    /// Frames handed out so far.
    #[cfg(test)]
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Bytes held out of turn.
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the arrival order and however many duplicates, every
        /// frame comes out once, in order.
        #[test]
        fn any_arrival_order_delivers_in_order_once(order in Just((0u64..50).collect::<Vec<_>>()).prop_shuffle(),
                                                    dups in proptest::collection::vec(0u64..50, 0..30)) {
            let mut r = Reorder::new(usize::MAX);
            let mut out = Vec::new();
            for seq in order.iter().chain(dups.iter()) {
                let _ = r.offer(*seq, *seq, 1);
                while let Some((s, f)) = r.pop() {
                    prop_assert_eq!(s, f);
                    out.push(s);
                }
            }
            prop_assert_eq!(out, (0..50).collect::<Vec<_>>());
            prop_assert_eq!(r.held_bytes(), 0);
        }
    }

    #[test]
    fn the_limit_applies_to_frames_out_of_turn_only() {
        let mut r = Reorder::new(10);
        assert_eq!(r.offer(1, "b", 8), Offer::Held);
        assert_eq!(r.offer(2, "c", 8), Offer::OverLimit);
        assert_eq!(r.offer(0, "a", 8), Offer::Held, "the next frame always fits");
        assert_eq!(r.offer(1, "b", 8), Offer::AlreadyHeld);
        assert_eq!(r.pop(), Some((0, "a")));
        assert_eq!(r.offer(0, "a", 8), Offer::AlreadyDelivered);
        assert!(r.delivered(0) && !r.delivered(1));
    }
}
