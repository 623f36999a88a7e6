//! The level `auto` compresses stream frames at, following whichever of
//! the link and the CPU is the bottleneck.

/// Chooses the zstd level for `auto` from where the stream
/// waits: on the link (the sender's window is full of frames in flight:
/// compress harder, fewer bytes to send) or on the CPU (input waits for a
/// compressor while the window has room: compress faster).
#[derive(Debug, Clone)]
pub struct LevelControl {
    level: i32,
}

impl Default for LevelControl {
    fn default() -> Self {
        LevelControl { level: pareco_compress::DEFAULT_LEVEL }
    }
}

/// Range of levels `auto` moves in: beyond 9 zstd gains little for a lot of CPU.
const AUTO_LEVELS: std::ops::RangeInclusive<i32> = 1..=9;

impl LevelControl {
    /// The level now.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Adjusts the level one step after a look at where the stream waits.
    pub fn observe(&mut self, link_bound: bool, cpu_bound: bool) -> i32 {
        if link_bound && self.level < *AUTO_LEVELS.end() {
            self.level += 1;
        } else if cpu_bound && self.level > *AUTO_LEVELS.start() {
            self.level -= 1;
        }
        self.level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_follows_the_bottleneck() {
        let mut c = LevelControl::default();
        assert_eq!(c.observe(true, false), 4, "the link is the bottleneck: compress harder");
        assert_eq!(c.observe(false, true), 3, "the CPU is: compress faster");
        assert_eq!(c.observe(false, false), 3);
        for _ in 0..20 {
            c.observe(false, true);
        }
        assert_eq!(c.level(), 1);
        for _ in 0..20 {
            c.observe(true, false);
        }
        assert_eq!(c.level(), 9);
    }
}
