//! The sender's choice of connection for each frame.
//!
//! Each connection may hold about [`HORIZON`] worth of its own measured
//! delivery rate in unacknowledged bytes (at least [`MIN_ROOM`]); a frame
//! goes to the connection with room and the fewest bytes in flight, and
//! waits when none has room. So frames spread over every connection from
//! the start (the first connection to open does not take the whole window),
//! a slow or stalled connection holds little of the stream back, and a fast
//! one is given as much as it can carry: its room grows with its rate.
//! A connection being retired (`-j auto` asked for fewer) gets no new
//! frames and is closed once its last one is acknowledged.

use std::collections::HashMap;
use std::time::Duration;

use crate::outstanding::LinkId;

/// How much of its own delivery rate a connection may hold in flight.
pub const HORIZON: Duration = Duration::from_secs(1);

/// The room of a connection before (or whatever) its rate is measured.
pub const MIN_ROOM: u64 = 2 << 20;

#[derive(Default)]
struct Load {
    in_flight: u64,
    /// Bytes acknowledged since the last [`Stripe::tick`].
    acked: u64,
    /// Delivery rate, bytes per second (moving average).
    rate: f64,
    /// To be closed once empty.
    retiring: bool,
}

impl Load {
    fn room(&self) -> u64 {
        ((self.rate * HORIZON.as_secs_f64()) as u64).max(MIN_ROOM)
    }
}

/// The load of every open connection.
#[derive(Default)]
pub struct Stripe {
    links: HashMap<LinkId, Load>,
}

impl Stripe {
    /// A connection opened.
    pub fn open(&mut self, link: LinkId) {
        self.links.entry(link).or_default();
    }

    /// A connection closed (its frames are sent again elsewhere).
    pub fn close(&mut self, link: LinkId) {
        self.links.remove(&link);
    }

    /// The connection for a frame of `len` bytes, if one has room: the one
    /// with the fewest bytes in flight. An idle connection always has room.
    pub fn pick(&self, len: u64) -> Option<LinkId> {
        self.links
            .iter()
            .filter(|(_, load)| !load.retiring)
            .filter(|(_, load)| load.in_flight == 0 || load.in_flight + len <= load.room())
            .min_by_key(|(id, load)| (load.in_flight, **id))
            .map(|(id, _)| *id)
    }

    /// Connections open and not being retired.
    pub fn active(&self) -> usize {
        self.links.values().filter(|l| !l.retiring).count()
    }

    /// Retires `n` connections, those with the least in flight first.
    pub fn retire(&mut self, n: usize) {
        let mut active: Vec<_> = self.links.iter_mut().filter(|(_, l)| !l.retiring).collect();
        active.sort_by_key(|(id, l)| (l.in_flight, std::cmp::Reverse(**id)));
        for (_, load) in active.into_iter().take(n) {
            load.retiring = true;
        }
    }

    /// Retired connections with nothing left in flight: forgotten here, to
    /// be closed by the caller.
    pub fn drained(&mut self) -> Vec<LinkId> {
        let done: Vec<LinkId> =
            self.links.iter().filter(|(_, l)| l.retiring && l.in_flight == 0).map(|(id, _)| *id).collect();
        for id in &done {
            self.links.remove(id);
        }
        done
    }

    /// `len` bytes were sent on `link`.
    pub fn sent(&mut self, link: LinkId, len: u64) {
        if let Some(load) = self.links.get_mut(&link) {
            load.in_flight += len;
        }
    }

    /// `len` bytes sent on `link` were acknowledged.
    pub fn acked(&mut self, link: LinkId, len: u64) {
        if let Some(load) = self.links.get_mut(&link) {
            load.in_flight = load.in_flight.saturating_sub(len);
            load.acked += len;
        }
    }

    /// Updates the rates with what was acknowledged over the last `elapsed`.
    pub fn tick(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-3);
        for load in self.links.values_mut() {
            let sample = load.acked as f64 / secs;
            // A busy connection's sample is its rate; an idle one's says
            // nothing, so it keeps what it had.
            if load.in_flight > 0 || sample > load.rate {
                load.rate = 0.7 * load.rate + 0.3 * sample;
            }
            load.acked = 0;
        }
    }

    /// Bytes in flight on every connection.
    #[cfg(test)]
    pub fn in_flight(&self) -> u64 {
        self.links.values().map(|l| l.in_flight).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn frames_spread_over_every_connection_before_any_holds_more_than_its_room() {
        let mut stripe = Stripe::default();
        for id in 0..4 {
            stripe.open(id);
        }
        let mut per_link = HashMap::new();
        while let Some(link) = stripe.pick(MIB) {
            stripe.sent(link, MIB);
            *per_link.entry(link).or_insert(0) += 1;
        }
        assert_eq!(per_link.len(), 4);
        assert!(per_link.values().all(|&n| n == MIN_ROOM / MIB), "{per_link:?}");
    }

    #[test]
    fn a_fast_connection_earns_room_and_a_slow_one_does_not() {
        let mut stripe = Stripe::default();
        stripe.open(1);
        stripe.open(2);
        for _ in 0..20 {
            for (link, acked) in [(1, 100 * MIB), (2, MIB / 10)] {
                stripe.sent(link, acked);
                stripe.acked(link, acked);
                stripe.sent(link, 1);
            }
            stripe.tick(Duration::from_secs(1));
            stripe.acked(1, 1);
            stripe.acked(2, 1);
        }
        stripe.sent(2, MIN_ROOM);
        let mut fast = 0;
        while stripe.pick(MIB) == Some(1) {
            stripe.sent(1, MIB);
            fast += 1;
        }
        assert!(fast > 50, "the fast connection took only {fast} MiB");
        assert_eq!(stripe.pick(MIB), None, "the slow one is full at its minimum room");
    }

    #[test]
    fn a_retired_connection_takes_nothing_more_and_is_closed_once_empty() {
        let mut stripe = Stripe::default();
        for id in 0..3 {
            stripe.open(id);
        }
        stripe.sent(0, MIB);
        stripe.sent(1, 3 * MIB / 2);
        stripe.retire(2);
        assert_eq!(stripe.active(), 1);
        assert_eq!(stripe.drained(), vec![2], "the idle one goes at once");
        assert_eq!(stripe.pick(MIB / 4), Some(1), "the busier one is kept");
        assert_eq!(stripe.drained(), vec![]);
        stripe.acked(0, MIB);
        assert_eq!(stripe.drained(), vec![0]);
        assert_eq!(stripe.in_flight(), 3 * MIB / 2);
    }

    #[test]
    fn an_idle_connection_always_takes_a_frame_even_a_big_one() {
        let mut stripe = Stripe::default();
        stripe.open(7);
        assert_eq!(stripe.pick(10 * MIN_ROOM), Some(7));
        stripe.sent(7, 10 * MIN_ROOM);
        assert_eq!(stripe.pick(1), None);
        stripe.acked(7, 10 * MIN_ROOM);
        assert_eq!(stripe.pick(1), Some(7));
        stripe.close(7);
        assert_eq!(stripe.pick(1), None);
        assert_eq!(stripe.in_flight(), 0);
    }
}
