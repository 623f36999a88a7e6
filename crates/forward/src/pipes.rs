//! What a burst of bytes moves through, lent for the burst only: pipes for
//! `splice(2)` (bytes move socket → pipe → socket inside the kernel, never
//! copied through user memory), and buffers for the copy through user
//! memory where no pipe can be had or splicing is off.
//!
//! Both are lent from shared pools and given back when the burst ends, so
//! ten thousand idle connections hold neither (a pipe per connection would
//! cost two more descriptors each and pin kernel memory; a buffer per
//! connection, 256 KiB of memory each). A pipe that may still hold data (its
//! burst failed half-way) is closed, never given back.
//!
//! Never blocks: every splice is non-blocking, and the caller waits for
//! socket readiness through tokio.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

/// Bytes one pipe holds (and the most one splice moves): 256 KiB, 64
/// pages, so that a fast socket fills it in few calls. Where the kernel
/// refuses (an unprivileged user over `pipe-user-pages-soft`), the pipe
/// keeps its default 64 KiB; the relay asks each pipe for what it holds.
const PIPE_SIZE: usize = 256 << 10;

/// Bytes of a copy buffer.
const BUFFER_SIZE: usize = 256 << 10;

/// Idle pipes (or buffers) kept for the next burst; more are dropped when given back.
const SPARES: usize = 64;

/// A pipe's two ends and how much it holds.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
    pub(crate) capacity: usize,
}

/// Idle things of one kind, lent for one burst at a time.
#[derive(Debug)]
struct Spares<T>(Mutex<Vec<T>>);

impl<T> Default for Spares<T> {
    fn default() -> Self {
        Spares(Mutex::new(Vec::new()))
    }
}

impl<T> Spares<T> {
    fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give(&self, thing: T) {
        let mut spare = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARES {
            spare.push(thing);
        }
    }
}

/// Pipes for splice(2).
#[derive(Debug, Default)]
pub(crate) struct PipePool(Spares<Pipe>);

impl PipePool {
    /// An idle pipe, or a new one; `None` when no pipe can be made (out of
    /// descriptors): the caller copies through a buffer instead.
    pub(crate) fn take(&self) -> Option<Pipe> {
        if let Some(pipe) = self.0.take() {
            return Some(pipe);
        }
        use rustix::pipe::{PipeFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with};
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
        let capacity = fcntl_setpipe_size(&write, PIPE_SIZE).or_else(|_| fcntl_getpipe_size(&write)).ok()?;
        Some(Pipe { read, write, capacity })
    }

    /// Gives back a pipe that is empty.
    pub(crate) fn give(&self, pipe: Pipe) {
        self.0.give(pipe)
    }
}

/// Buffers for the copy through user memory.
#[derive(Debug, Default)]
pub(crate) struct BufferPool(Spares<Vec<u8>>);

impl BufferPool {
    /// An idle buffer, or a new one.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.0.take().unwrap_or_else(|| vec![0; BUFFER_SIZE])
    }

    /// Gives back a buffer (its content does not matter).
    pub(crate) fn give(&self, buffer: Vec<u8>) {
        self.0.give(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_are_reused_and_sized() {
        let pool = PipePool::default();
        let pipe = pool.take().expect("a pipe");
        assert!(pipe.capacity >= 64 << 10);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&pipe.read);
        pool.give(pipe);
        let again = pool.take().unwrap();
        assert_eq!(std::os::fd::AsRawFd::as_raw_fd(&again.read), fd, "the spare pipe is lent again");
    }

    #[test]
    fn spares_are_bounded() {
        let pool = BufferPool::default();
        let lent: Vec<_> = (0..SPARES + 10).map(|_| pool.take()).collect();
        assert!(lent.iter().all(|b| b.len() == BUFFER_SIZE));
        for buffer in lent {
            pool.give(buffer);
        }
        assert_eq!(pool.0.0.lock().unwrap().len(), SPARES);
    }
}
