//! Frame encoding: zstd when it pays, raw when it does not, at a level that
//! keeps the link busy without starving it.
//!
//! Frames are compressed independently, so many compress at once on all
//! cores and any one decompresses alone. Incompressible data (random,
//! encrypted, already compressed) is recognised and sent raw; after a frame
//! fails to shrink, the next ones skip compression (1, 2, 4 … up to 64
//! frames) and only an occasional probe is compressed, so such data costs
//! almost no CPU.

use bytes::Bytes;
use pareco_proto::stream::Encoding;

/// What `--compress` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Never compress.
    None,
    /// Always try zstd at this level.
    Zstd(i32),
    /// zstd where it pays, at a level that follows the bottleneck.
    Auto,
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Compression::Auto),
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd(3)),
            _ => {
                let level = s
                    .strip_prefix("zstd:")
                    .ok_or_else(|| format!("unknown compression {s:?} (auto, none, zstd[:LEVEL])"))?;
                let level: i32 = level.parse().map_err(|_| format!("bad zstd level in {s:?}"))?;
                if !(1..=19).contains(&level) {
                    return Err(format!("zstd level must be 1 to 19, not {level}"));
                }
                Ok(Compression::Zstd(level))
            }
        }
    }
}

/// A frame compresses when it shrinks to at most this fraction.
const PAYS: f64 = 0.97;

/// Longest run of frames sent raw without a probe.
const MAX_SKIP: u32 = 64;

/// One compressing worker's state.
pub struct Encoder {
    compressor: zstd::bulk::Compressor<'static>,
    level: i32,
    /// Frames still to send raw before the next probe.
    skip: u32,
    /// How long the last run of raw frames was.
    backoff: u32,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            compressor: zstd::bulk::Compressor::new(3).expect("zstd level 3 exists"),
            level: 3,
            skip: 0,
            backoff: 0,
        }
    }
}

impl Encoder {
    /// Encodes one frame under `policy`; `auto_level` is the level the
    /// controller currently wants for [`Compression::Auto`].
    pub fn encode(&mut self, raw: Bytes, policy: Compression, auto_level: i32) -> (Encoding, Bytes) {
        let level = match policy {
            Compression::None => return (Encoding::Raw, raw),
            Compression::Zstd(level) => level,
            Compression::Auto => {
                if self.skip > 0 {
                    self.skip -= 1;
                    return (Encoding::Raw, raw);
                }
                auto_level
            }
        };
        if level != self.level && self.compressor.set_compression_level(level).is_ok() {
            self.level = level;
        }
        let bound = (raw.len() as f64 * PAYS) as usize;
        let mut out = vec![0u8; zstd::zstd_safe::compress_bound(raw.len())];
        match self.compressor.compress_to_buffer(&raw[..], &mut out) {
            Ok(n) if n <= bound => {
                self.backoff = 0;
                out.truncate(n);
                (Encoding::Zstd, Bytes::from(out))
            }
            _ => {
                if policy == Compression::Auto {
                    self.backoff = (self.backoff * 2).clamp(1, MAX_SKIP);
                    self.skip = self.backoff;
                }
                (Encoding::Raw, raw)
            }
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frame {seq} does not decode to its announced {raw_len} bytes")]
pub struct DecodeError {
    /// The frame.
    pub seq: u64,
    /// What it claimed.
    pub raw_len: u32,
}

/// Decodes one frame to exactly `raw_len` bytes (never more is allocated).
pub fn decode(seq: u64, encoding: Encoding, payload: Bytes, raw_len: u32) -> Result<Bytes, DecodeError> {
    let err = DecodeError { seq, raw_len };
    let raw = match encoding {
        Encoding::Raw => payload,
        Encoding::Zstd => Bytes::from(zstd::bulk::decompress(&payload, raw_len as usize).map_err(|_| err.clone())?),
    };
    if raw.len() != raw_len as usize {
        return Err(err);
    }
    Ok(raw)
}

/// Chooses the zstd level for [`Compression::Auto`] from where the stream
/// waits: on the link (the sender's window is full of frames in flight:
/// compress harder, fewer bytes to send) or on the CPU (input waits for a
/// compressor while the window has room: compress faster).
#[derive(Debug, Clone)]
pub struct LevelControl {
    level: i32,
}

impl Default for LevelControl {
    fn default() -> Self {
        LevelControl { level: 3 }
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

    fn text(n: usize) -> Bytes {
        Bytes::from(b"the quick brown fox jumps over the lazy database page ".repeat(n / 50 + 1)[..n].to_vec())
    }

    fn random(n: usize) -> Bytes {
        let mut out = Vec::with_capacity(n);
        let mut x: u64 = 0x9e3779b97f4a7c15;
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(n);
        Bytes::from(out)
    }

    #[test]
    fn text_compresses_and_decodes_back() {
        let mut e = Encoder::default();
        let raw = text(1 << 20);
        let (enc, payload) = e.encode(raw.clone(), Compression::Auto, 3);
        assert_eq!(enc, Encoding::Zstd);
        assert!(payload.len() < raw.len() / 10);
        assert_eq!(decode(0, enc, payload, raw.len() as u32).unwrap(), raw);
    }

    #[test]
    fn incompressible_frames_go_raw_and_back_off() {
        let mut e = Encoder::default();
        let noise = random(1 << 16);
        let mut compressed_attempts = 0;
        for _ in 0..40 {
            let skipping = e.skip > 0;
            let (enc, payload) = e.encode(noise.clone(), Compression::Auto, 3);
            assert_eq!((enc, payload.len()), (Encoding::Raw, noise.len()));
            compressed_attempts += usize::from(!skipping);
        }
        assert!(compressed_attempts <= 6, "{compressed_attempts} probes for 40 random frames");
        // Text after noise is compressed again once the backoff runs out.
        let mut compressed = false;
        for _ in 0..70 {
            compressed |= e.encode(text(1 << 16), Compression::Auto, 3).0 == Encoding::Zstd;
        }
        assert!(compressed);
        assert_eq!(e.encode(text(1000), Compression::None, 3).0, Encoding::Raw);
    }

    #[test]
    fn frames_that_lie_about_their_length_are_refused() {
        let mut e = Encoder::default();
        let raw = text(10_000);
        let (enc, payload) = e.encode(raw.clone(), Compression::Zstd(1), 0);
        assert!(decode(7, enc, payload.clone(), 9_999).is_err(), "more than announced");
        assert!(decode(7, enc, payload, 10_001).is_err(), "less than announced");
        assert!(decode(7, Encoding::Zstd, Bytes::from_static(b"garbage"), 100).is_err());
    }

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

    #[test]
    fn compression_flags_parse() {
        assert_eq!("auto".parse(), Ok(Compression::Auto));
        assert_eq!("none".parse(), Ok(Compression::None));
        assert_eq!("zstd".parse(), Ok(Compression::Zstd(3)));
        assert_eq!("zstd:7".parse(), Ok(Compression::Zstd(7)));
        assert!("zstd:0".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
    }
}
