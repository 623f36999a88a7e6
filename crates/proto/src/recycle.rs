//! Buffers for file data on its way, used again once it has arrived.
//!
//! A piece read to be sent lives until its answer comes back (the pool keeps
//! the request to resend it), and a large frame received lives until its
//! data is written; then each is freed. Fresh memory for every piece or
//! frame costs the kernel a page fault and a zeroed page per 4 KiB (on a fast
//! link a tenth of the sender's CPU), and the allocator hands such buffers
//! back to the kernel as soon as they are freed; a buffer handed back here
//! when its last `Bytes` is dropped is already mapped, and is filled again
//! without being cleared (only its length is reset).
//!
//! When full, it makes room for a returned buffer by dropping the oldest:
//! piece sizes follow the run's rate, and buffers of the sizes of a minute
//! ago must not keep out those of now.
//!
//! What it must never do: hold more than [`KEEP_BYTES`], or hand out a
//! buffer still referenced (it only ever gets one back from a drop).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

/// Most memory kept in idle buffers.
const KEEP_BYTES: usize = 32 << 20;

/// Buffers outside these capacities are not kept (tiny ones cost nothing
/// to allocate; huge ones are rare and would pin memory).
const MIN_CAPACITY: usize = 32 << 10;
const MAX_CAPACITY: usize = 4 << 20;

static IDLE: Mutex<Idle> = Mutex::new(Idle { buffers: VecDeque::new(), bytes: 0 });

struct Idle {
    /// Oldest first.
    buffers: VecDeque<Vec<u8>>,
    bytes: usize,
}

/// How many of the newest idle buffers are looked at for one of the size
/// wanted: pieces come in a handful of sizes.
const LOOK_AT: usize = 16;

/// An empty buffer with room for exactly `len` bytes (readers fill all
/// the spare capacity they are given).
pub fn take(len: usize) -> Vec<u8> {
    if (MIN_CAPACITY..=MAX_CAPACITY).contains(&len) {
        let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
        let n = idle.buffers.len();
        if let Some(i) = (n.saturating_sub(LOOK_AT)..n).rev().find(|&i| idle.buffers[i].capacity() == len) {
            let mut buf = idle.buffers.remove(i).expect("index in range");
            idle.bytes -= buf.capacity();
            buf.clear();
            return buf;
        }
    }
    Vec::with_capacity(len)
}

/// `data` as `Bytes` that give their buffer back when the last of them is
/// dropped.
pub fn bytes(data: Vec<u8>) -> Bytes {
    if (MIN_CAPACITY..=MAX_CAPACITY).contains(&data.capacity()) {
        Bytes::from_owner(Returned(data))
    } else {
        Bytes::from(data)
    }
}

struct Returned(Vec<u8>);

impl AsRef<[u8]> for Returned {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
        while idle.bytes + buf.capacity() > KEEP_BYTES {
            let Some(oldest) = idle.buffers.pop_front() else { break };
            idle.bytes -= oldest.capacity();
        }
        idle.bytes += buf.capacity();
        idle.buffers.push_back(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_is_handed_out_again_empty() {
        let mut v = take(100 << 10);
        v.extend_from_slice(&[7; 100 << 10]);
        let ptr = v.as_ptr();
        let b = bytes(v);
        let c = b.slice(10..20);
        drop(b);
        assert_eq!(&c[..], &[7; 10]);
        drop(c);
        // Other tests may take it first; then this one is a fresh one.
        let again = take(100 << 10);
        assert!(again.is_empty() && again.capacity() == 100 << 10);
        let _ = ptr;
    }

    #[test]
    fn buffers_of_the_sizes_in_use_push_out_older_ones() {
        // A full pool of one size (as after a ramp-up in small pieces)...
        let small: Vec<Bytes> = (0..KEEP_BYTES / MIN_CAPACITY).map(|_| bytes(take(MIN_CAPACITY))).collect();
        drop(small);
        // ...still keeps what now comes back in another size.
        let big = take(MAX_CAPACITY);
        let ptr = big.as_ptr();
        drop(bytes(big));
        let idle = IDLE.lock().unwrap();
        assert!(idle.bytes <= KEEP_BYTES);
        assert!(idle.buffers.iter().any(|b| b.as_ptr() == ptr), "the newest buffer is kept");
    }
}
