//! How long the final round of a live migration will take — the downtime —
//! predicted from the rounds run while the source was still live.
//!
//! The model, from what each round saw:
//! - the source changes at `c` bytes of content per second of wall time:
//!   what a round sent, divided by the wall time since the round before it
//!   started (the time over which those changes piled up);
//! - changes are brought over at `r` bytes per second: what a round sent,
//!   divided by the part of the round not spent walking the tree (this is
//!   the link rate as it was measured, hashing and round trips included);
//! - every round costs the time to walk the tree, `w`, even when nothing
//!   changed.
//!
//! The final round starts when the last live round ends, once the
//! application is stopped: it finds what changed while that last round ran,
//! `c × d` for a last round of `d` seconds, so it takes `w + c × d / r`.
//! The rates are averaged over the last two rounds that saw changes, to
//! smooth a bursty writer. The first round catches up with all the
//! destination lacked (everything, on a first copy), so it says nothing
//! about the rate of change: the prediction starts with round two.
//!
//! Pure arithmetic: no clock (times come in as numbers), no I/O.

/// What one round of a live sync saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    /// Seconds from the start of the previous round to the start of this
    /// one (`None` for the first round).
    pub since_previous_s: Option<f64>,
    /// Seconds the round took.
    pub duration_s: f64,
    /// Seconds until the walk had listed every directory.
    pub walk_s: f64,
    /// Bytes of content the round sent (changed content).
    pub bytes_sent: u64,
}

/// The predicted final round, and what it is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// The final round's predicted duration, in seconds.
    pub final_s: f64,
    /// The time to walk the tree (in the prediction).
    pub walk_s: f64,
    /// Bytes the final round is expected to send.
    pub bytes: f64,
    /// Bytes of content changed per second of wall time.
    pub change_rate: f64,
    /// Bytes of content brought over per second of transfer.
    pub transfer_rate: f64,
}

/// Shortest transfer time a rate is computed over (a round that sent a
/// few bytes while walking would otherwise claim an absurd rate).
const MIN_TRANSFER_S: f64 = 0.05;

/// The final round's duration predicted from `rounds` (oldest first), if
/// there are at least two.
pub fn predict(rounds: &[Round]) -> Option<Prediction> {
    let last = rounds.last()?;
    let live: Vec<&Round> = rounds.iter().filter(|r| r.since_previous_s.is_some_and(|s| s > 0.0)).collect();
    if live.is_empty() {
        return None;
    }
    let recent = &live[live.len().saturating_sub(2)..];
    let n = recent.len() as f64;
    let change_rate = recent.iter().map(|r| r.bytes_sent as f64 / r.since_previous_s.unwrap_or(1.0)).sum::<f64>() / n;
    // The transfer rate from the rounds that sent something: one that sent
    // nothing measured no rate.
    let sending: Vec<&&Round> = live.iter().rev().filter(|r| r.bytes_sent > 0).take(2).collect();
    let transfer_rate = if sending.is_empty() {
        f64::INFINITY
    } else {
        sending
            .iter()
            .map(|r| r.bytes_sent as f64 / (r.duration_s - r.walk_s.min(r.duration_s)).max(MIN_TRANSFER_S))
            .sum::<f64>()
            / sending.len() as f64
    };
    let walk_s = last.walk_s.min(last.duration_s).max(0.0);
    let bytes = change_rate * last.duration_s;
    let final_s = walk_s + if bytes > 0.0 { bytes / transfer_rate } else { 0.0 };
    Some(Prediction { final_s, walk_s, bytes, change_rate, transfer_rate })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(since: Option<f64>, duration_s: f64, walk_s: f64, bytes_sent: u64) -> Round {
        Round { since_previous_s: since, duration_s, walk_s, bytes_sent }
    }

    #[test]
    fn the_first_round_predicts_nothing() {
        assert_eq!(predict(&[]), None);
        assert_eq!(predict(&[round(None, 100.0, 2.0, 1 << 30)]), None);
    }

    #[test]
    fn the_final_round_walks_then_sends_what_changed_during_the_last_round() {
        // 10 MB/s of changes; 20 s between the rounds' starts; the second
        // round sent 200 MB in 10 s after a 2 s walk: 25 MB/s.
        let rounds = [round(None, 20.0, 2.0, 5_000_000_000), round(Some(20.0), 10.0, 2.0, 200_000_000)];
        let p = predict(&rounds).unwrap();
        assert_eq!(p.change_rate, 10_000_000.0);
        assert_eq!(p.transfer_rate, 25_000_000.0);
        // 10 s of changes at 10 MB/s, sent at 25 MB/s, after the walk.
        assert_eq!(p.bytes, 100_000_000.0);
        assert!((p.final_s - 6.0).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn rates_are_averaged_over_the_last_two_live_rounds() {
        let rounds = [
            round(None, 50.0, 1.0, 1 << 40),
            round(Some(50.0), 11.0, 1.0, 500_000_000),
            round(Some(11.0), 6.0, 1.0, 110_000_000),
            round(Some(6.0), 5.0, 1.0, 60_000_000),
        ];
        let p = predict(&rounds).unwrap();
        assert_eq!(p.change_rate, 10_000_000.0);
        assert_eq!(p.transfer_rate, (22_000_000.0 + 15_000_000.0) / 2.0);
        assert!((p.final_s - (1.0 + 50_000_000.0 / 18_500_000.0)).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn a_source_that_stopped_changing_costs_only_the_walk() {
        let rounds = [round(None, 30.0, 3.0, 1 << 30), round(Some(30.0), 3.5, 3.0, 0)];
        let p = predict(&rounds).unwrap();
        assert_eq!((p.final_s, p.bytes), (3.0, 0.0));
    }

    #[test]
    fn a_round_all_walk_does_not_claim_an_infinite_rate() {
        let rounds = [round(None, 30.0, 3.0, 1 << 30), round(Some(30.0), 3.0, 3.0, 1_000_000)];
        let p = predict(&rounds).unwrap();
        assert!(p.transfer_rate.is_finite() && p.final_s.is_finite(), "{p:?}");
        assert!(p.final_s >= 3.0);
    }
}
