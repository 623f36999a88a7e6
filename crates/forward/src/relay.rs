//! One forwarded connection once both ends are connected: bytes both ways
//! until both are done, exactly as they came.
//!
//! - Bytes move with `splice(2)` through a pipe lent for the burst (see
//!   `pipes`), or through a 256 KiB buffer lent the same way where no pipe
//!   can be had or splicing is turned off.
//! - Half-close is kept: when one side finishes sending (EOF), the other
//!   gets `shutdown(SHUT_WR)` (a FIN) and the opposite direction keeps
//!   flowing until it finishes too.
//! - A reset stays a reset: when one side resets (or fails), the other is
//!   closed with `SO_LINGER` 0, which sends it a reset instead of a FIN
//!   that would look like a complete answer.
//! - An idle timeout closes both sides after nothing moved either way for
//!   that long; a cut at shutdown (the drain timeout ran out, or a second
//!   signal came) resets both.
//!
//! Never spawns a thread or a task per connection, never holds a pipe or
//! a buffer between bursts, and never buffers more than one burst: a slow
//! reader holds its writer back through TCP.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::pipes::{BufferPool, PipePool};
use crate::record::{Cut, Ending, Side};
use crate::stats::RuleStats;

/// Splices in one burst before letting other connections run.
const BURST_SPLICES: usize = 64;

/// What the relay of a connection needs besides its two sockets.
pub(crate) struct RelayContext<'a> {
    /// Where bytes are counted as they move.
    pub(crate) stats: &'a RuleStats,
    /// Pipes to splice through; `None`: copy through user memory.
    pub(crate) pipes: Option<&'a PipePool>,
    /// Buffers to copy through.
    pub(crate) buffers: &'a BufferPool,
    /// Close after this long with nothing moving.
    pub(crate) idle_timeout: Option<Duration>,
    /// Becomes the reason when connections must be cut.
    pub(crate) abort: watch::Receiver<Option<Cut>>,
}

/// How a relay went.
pub(crate) struct Outcome {
    pub(crate) up: u64,
    pub(crate) down: u64,
    pub(crate) ending: Ending,
}

/// Which way a pump moves bytes.
#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// What the relay loop waits for.
enum Event {
    /// The pump reading from this side stopped.
    Finished(Side, Result<(), Fault>),
    Idle,
    Cut(Cut),
}

/// Why a pump stopped early.
enum Fault {
    Read(io::Error),
    Write(io::Error),
}

/// Moves bytes both ways between `client` and `target` until both sides
/// are done, one fails, the idle timeout passes or the relay is aborted.
pub(crate) async fn relay(client: &TcpStream, target: &TcpStream, cx: RelayContext<'_>) -> Outcome {
    let started = Instant::now();
    let last_moved = AtomicU64::new(0); // milliseconds since `started`
    let (up_bytes, down_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let moved = |direction: Direction, n: usize| {
        let n = n as u64;
        match direction {
            Direction::Up => {
                up_bytes.fetch_add(n, Relaxed);
                cx.stats.up(n);
            }
            Direction::Down => {
                down_bytes.fetch_add(n, Relaxed);
                cx.stats.down(n);
            }
        }
        last_moved.store(started.elapsed().as_millis() as u64, Relaxed);
    };
    let (pipes, buffers) = (cx.pipes, cx.buffers);
    let up = pump(client, target, pipes, buffers, |n| moved(Direction::Up, n));
    let down = pump(target, client, pipes, buffers, |n| moved(Direction::Down, n));
    let idle = async {
        let Some(limit) = cx.idle_timeout else { return std::future::pending().await };
        loop {
            let quiet = started.elapsed().saturating_sub(Duration::from_millis(last_moved.load(Relaxed)));
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    };
    let mut abort = cx.abort;
    let abort = async move {
        let why = abort.wait_for(Option::is_some).await.ok().and_then(|cut| *cut);
        match why {
            Some(why) => why,
            // A dropped sender is no order to cut.
            None => std::future::pending().await,
        }
    };
    tokio::pin!(up, down, idle, abort);
    let (mut up_done, mut down_done, mut first) = (false, false, None);
    let ending = loop {
        let event = tokio::select! {
            r = &mut up, if !up_done => Event::Finished(Side::Client, r),
            r = &mut down, if !down_done => Event::Finished(Side::Target, r),
            () = &mut idle => Event::Idle,
            why = &mut abort => Event::Cut(why),
        };
        match event {
            Event::Finished(reader, Ok(())) => {
                *if reader == Side::Client { &mut up_done } else { &mut down_done } = true;
                let first = *first.get_or_insert(reader);
                if up_done && down_done {
                    break Ending::Closed { first };
                }
            }
            Event::Finished(reader, Err(fault)) => {
                let (side, error) = match fault {
                    Fault::Read(e) => (reader, e),
                    Fault::Write(e) => (reader.other(), e),
                };
                // Pass it on: the other side learns that the connection broke.
                reset(client);
                reset(target);
                break Ending::Broken { side, error };
            }
            Event::Idle => break Ending::IdleTimeout,
            Event::Cut(why) => {
                reset(client);
                reset(target);
                break Ending::Cut(why);
            }
        }
    };
    Outcome { up: up_bytes.load(Relaxed), down: down_bytes.load(Relaxed), ending }
}

/// Closing this socket will send a reset (and drop unsent bytes).
pub(crate) fn reset(socket: &TcpStream) {
    let _ = socket.set_zero_linger();
}

/// Moves bytes from `from` to `to` until `from` ends (then sends `to` a
/// FIN) or a side fails; reports each write through `moved`.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    pipes: Option<&PipePool>,
    buffers: &BufferPool,
    moved: impl Fn(usize),
) -> Result<(), Fault> {
    let mut splicing = pipes.is_some();
    loop {
        from.readable().await.map_err(Fault::Read)?;
        let pipe = if splicing { pipes.and_then(PipePool::take) } else { None };
        let burst = match (pipe, pipes) {
            (Some(pipe), Some(pool)) => splice_burst(from, to, pipe, pool, &moved).await?,
            _ => {
                let mut buffer = buffers.take();
                let burst = copy_burst(from, to, &mut buffer, &moved).await?;
                buffers.give(buffer);
                burst
            }
        };
        match burst {
            Burst::Paused => {}
            Burst::Unsupported => splicing = false,
            Burst::Ended => {
                // The peer may be gone already: its own direction will say so.
                let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
                return Ok(());
            }
        }
    }
}

enum Burst {
    /// `from` has nothing more for now.
    Paused,
    /// `from` sent its last byte.
    Ended,
    /// These sockets cannot be spliced: copy instead.
    Unsupported,
}

async fn splice_burst(
    from: &TcpStream,
    to: &TcpStream,
    pipe: crate::pipes::Pipe,
    pool: &PipePool,
    moved: &impl Fn(usize),
) -> Result<Burst, Fault> {
    use rustix::pipe::{SpliceFlags, splice};
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    for _ in 0..BURST_SPLICES {
        let filled =
            from.try_io(Interest::READABLE, || Ok(splice(from, None, &pipe.write, None, pipe.capacity, flags)?));
        let mut left = match filled {
            Ok(0) => {
                pool.give(pipe);
                return Ok(Burst::Ended);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pool.give(pipe);
                return Ok(Burst::Paused);
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                pool.give(pipe);
                return Ok(Burst::Unsupported);
            }
            Err(e) => return Err(Fault::Read(e)),
        };
        // Empty the pipe before reading more: a pipe is never given back full.
        while left > 0 {
            match to.try_io(Interest::WRITABLE, || Ok(splice(&pipe.read, None, to, None, left, flags)?)) {
                Ok(n) => {
                    left -= n;
                    moved(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await.map_err(Fault::Write)?,
                Err(e) => return Err(Fault::Write(e)),
            }
        }
    }
    pool.give(pipe);
    Ok(Burst::Paused)
}

async fn copy_burst(
    from: &TcpStream,
    to: &TcpStream,
    buffer: &mut [u8],
    moved: &impl Fn(usize),
) -> Result<Burst, Fault> {
    for _ in 0..BURST_SPLICES {
        let n = match from.try_read(buffer) {
            Ok(0) => return Ok(Burst::Ended),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Paused),
            Err(e) => return Err(Fault::Read(e)),
        };
        let mut sent = 0;
        while sent < n {
            match to.try_write(&buffer[sent..n]) {
                Ok(m) => {
                    sent += m;
                    moved(m);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await.map_err(Fault::Write)?,
                Err(e) => return Err(Fault::Write(e)),
            }
        }
    }
    Ok(Burst::Paused)
}
