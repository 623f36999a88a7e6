//! Compression of frames: zstd when it pays, raw when it does not. Used by
//! the stream pipe for its data frames and by connections for whole
//! protocol frames (sync data and listings).
//!
//! Frames are compressed independently, so many compress at once on all
//! cores and any one decompresses alone. Under `auto`, incompressible data
//! (random, encrypted, already compressed) is recognised by compressing a
//! sample of each frame (4 KiB slices spread over it, 1/32 of the frame) at
//! the fastest level, and sent raw: it costs little CPU, and a frame of text
//! right after one of random data is still compressed.

use bytes::Bytes;
use pareco_proto::stream::Encoding;

pub mod gate;

/// The zstd level of `zstd` without a level, and where nothing else decides:
/// a good ratio at a few hundred MB/s per core.
pub const DEFAULT_LEVEL: i32 = 3;

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
            "zstd" => Ok(Compression::Zstd(DEFAULT_LEVEL)),
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

/// A frame's sample must shrink to this fraction for the frame to be tried.
const SAMPLE_PAYS: f64 = 0.9;

/// The sample: slices of this many bytes spread over the frame, one per
/// [`SAMPLE_EVERY`] bytes of it (1/32), at most [`SAMPLE_SLICES`].
const SAMPLE_SLICE: usize = 4 << 10;
const SAMPLE_EVERY: usize = 128 << 10;
const SAMPLE_SLICES: usize = 8;

/// Frames smaller than this are tried whole.
const SAMPLE_MIN: usize = 16 << 10;

/// One compressing worker's state.
pub struct Encoder {
    compressor: zstd::bulk::Compressor<'static>,
    level: i32,
    /// The fastest level, for samples.
    sampler: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            compressor: zstd::bulk::Compressor::new(DEFAULT_LEVEL).expect("the default zstd level exists"),
            level: DEFAULT_LEVEL,
            sampler: zstd::bulk::Compressor::new(1).expect("zstd level 1 exists"),
            scratch: Vec::new(),
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
            Compression::Auto if !self.sample_pays(&raw) => return (Encoding::Raw, raw),
            Compression::Auto => auto_level,
        };
        if level != self.level && self.compressor.set_compression_level(level).is_ok() {
            self.level = level;
        }
        let bound = (raw.len() as f64 * PAYS) as usize;
        let mut out = vec![0u8; zstd::zstd_safe::compress_bound(raw.len())];
        match self.compressor.compress_to_buffer(&raw[..], &mut out) {
            Ok(n) if n <= bound => {
                out.truncate(n);
                (Encoding::Zstd, Bytes::from(out))
            }
            _ => (Encoding::Raw, raw),
        }
    }

    /// Whether a sample of `raw` compresses enough to try the whole frame
    /// (always, for frames too small to sample): 4 KiB slices spread over
    /// it, 1/32 of it, at least one and at most eight.
    pub fn sample_pays(&mut self, raw: &[u8]) -> bool {
        if raw.len() < SAMPLE_MIN {
            return true;
        }
        let slices = (raw.len() / SAMPLE_EVERY).clamp(1, SAMPLE_SLICES);
        self.scratch.clear();
        let step = (raw.len() - SAMPLE_SLICE) / slices.max(2).saturating_sub(1);
        for i in 0..slices {
            self.scratch.extend_from_slice(&raw[i * step..i * step + SAMPLE_SLICE]);
        }
        let mut out = vec![0u8; zstd::zstd_safe::compress_bound(self.scratch.len())];
        match self.sampler.compress_to_buffer(&self.scratch[..], &mut out) {
            Ok(n) => (n as f64) <= self.scratch.len() as f64 * SAMPLE_PAYS,
            Err(_) => false,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a compressed frame does not decode to its announced {raw_len} bytes")]
pub struct DecodeError {
    /// What it claimed.
    pub raw_len: u32,
}

/// Decodes one frame to exactly `raw_len` bytes (never more is allocated).
pub fn decode(encoding: Encoding, payload: Bytes, raw_len: u32) -> Result<Bytes, DecodeError> {
    let err = DecodeError { raw_len };
    let raw = match encoding {
        Encoding::Raw => payload,
        Encoding::Zstd => Bytes::from(zstd::bulk::decompress(&payload, raw_len as usize).map_err(|_| err.clone())?),
    };
    if raw.len() != raw_len as usize {
        return Err(err);
    }
    Ok(raw)
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
        assert_eq!(decode(enc, payload, raw.len() as u32).unwrap(), raw);
    }

    #[test]
    fn incompressible_frames_go_raw_after_a_sample_and_text_right_after_compresses() {
        let mut e = Encoder::default();
        let noise = random(1 << 20);
        assert!(!e.sample_pays(&noise), "the sample alone rules random data out");
        assert_eq!(e.encode(noise.clone(), Compression::Auto, 3), (Encoding::Raw, noise.clone()));
        assert_eq!(e.encode(text(1 << 20), Compression::Auto, 3).0, Encoding::Zstd);
        // Half random, half text: the sample sees both, and the frame shrinks.
        let half = Bytes::from([&noise[..1 << 19], &text(1 << 19)[..]].concat());
        assert_eq!(e.encode(half, Compression::Auto, 3).0, Encoding::Zstd);
        // Forced compression still sends raw what does not shrink.
        assert_eq!(e.encode(noise.clone(), Compression::Zstd(3), 0).0, Encoding::Raw);
        assert_eq!(e.encode(text(1000), Compression::None, 3).0, Encoding::Raw);
        // Small frames are tried whole.
        assert_eq!(e.encode(text(1000), Compression::Auto, 3).0, Encoding::Zstd);
    }

    #[test]
    fn frames_that_lie_about_their_length_are_refused() {
        let mut e = Encoder::default();
        let raw = text(10_000);
        let (enc, payload) = e.encode(raw.clone(), Compression::Zstd(1), 0);
        assert!(decode(enc, payload.clone(), 9_999).is_err(), "more than announced");
        assert!(decode(enc, payload, 10_001).is_err(), "less than announced");
        assert!(decode(Encoding::Zstd, Bytes::from_static(b"garbage"), 100).is_err());
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
