//! Pipes for `splice(2)`: bytes move socket → pipe → socket inside the
//! kernel, never copied through user memory.
//!
//! A pipe is needed only while bytes are moving, so pipes are lent from a
//! shared pool for one burst and given back empty: ten thousand idle
//! connections hold no pipe (a pipe per connection would cost two more
//! descriptors each and pin kernel memory). A pipe that may still hold data
//! (its burst failed half-way) is closed, never given back.
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

/// Idle pipes kept for the next burst; more are closed when given back.
const SPARE_PIPES: usize = 64;

/// A pipe's two ends and how much it holds.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
    pub(crate) capacity: usize,
}

/// Idle pipes, lent for one burst at a time.
#[derive(Debug, Default)]
pub(crate) struct PipePool {
    spare: Mutex<Vec<Pipe>>,
}

impl PipePool {
    /// An idle pipe, or a new one; `None` when no pipe can be made (out of
    /// descriptors): the caller copies through user memory instead.
    pub(crate) fn take(&self) -> Option<Pipe> {
        if let Some(pipe) = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(pipe);
        }
        use rustix::pipe::{PipeFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with};
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
        let capacity = fcntl_setpipe_size(&write, PIPE_SIZE).or_else(|_| fcntl_getpipe_size(&write)).ok()?;
        Some(Pipe { read, write, capacity })
    }

    /// Gives back a pipe that is empty.
    pub(crate) fn give(&self, pipe: Pipe) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_PIPES {
            spare.push(pipe);
        }
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
}
