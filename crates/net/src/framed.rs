//! Frames over a byte stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use pareco_proto::codec::{self, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{NetError, WireCounters};

/// Payloads at least this large are written straight from their buffer
/// rather than copied next to their header.
const ZERO_COPY_MIN: usize = 64 << 10;

/// Buffered headers and small frames are written out beyond this size.
const FLUSH_AT: usize = 256 << 10;

/// Reads frames. Cancel-safe: a partial frame stays buffered.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    counters: Arc<WireCounters>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a read half; received bytes are added to `counters`.
    pub fn new(inner: R, counters: Arc<WireCounters>) -> Self {
        FrameReader { inner, buf: BytesMut::with_capacity(64 << 10), counters }
    }

    /// The next frame; `None` when the peer closed cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, NetError> {
        loop {
            if let Some(frame) = codec::decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 16 << 10 {
                self.buf.reserve(64 << 10);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed mid-frame").into())
                };
            }
            self.counters.received.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Writes frames, coalescing small ones into few system calls.
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
    counters: Arc<WireCounters>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a write half; sent bytes are added to `counters`.
    pub fn new(inner: W, counters: Arc<WireCounters>) -> Self {
        FrameWriter { inner, buf: BytesMut::with_capacity(FLUSH_AT), counters }
    }

    /// Queues a frame; it may stay buffered until [`FrameWriter::flush`].
    pub async fn write(&mut self, frame: &Frame) -> Result<(), NetError> {
        if let Some(tail) = codec::encode(frame, &mut self.buf) {
            if tail.len() < ZERO_COPY_MIN {
                self.buf.extend_from_slice(&tail);
            } else {
                self.write_buffered().await?;
                self.inner.write_all(&tail).await?;
                self.counters.sent.fetch_add(tail.len() as u64, Ordering::Relaxed);
            }
        }
        if self.buf.len() >= FLUSH_AT {
            self.write_buffered().await?;
        }
        Ok(())
    }

    /// Writes out everything queued.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        self.write_buffered().await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// Writes one frame and flushes.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), NetError> {
        self.write(frame).await?;
        self.flush().await
    }

    /// Flushes and closes the write direction (the peer sees EOF).
    pub async fn shutdown(&mut self) -> Result<(), NetError> {
        self.flush().await?;
        self.inner.shutdown().await?;
        Ok(())
    }

    async fn write_buffered(&mut self) -> Result<(), NetError> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.counters.sent.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
            self.buf.clear();
        }
        Ok(())
    }
}

/// Writes frames from `rx` as they come, flushing whenever the queue runs
/// dry, until every sender is gone; then closes the write direction.
pub async fn pump<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    rx: &mut mpsc::Receiver<Frame>,
) -> Result<(), NetError> {
    while let Some(frame) = rx.recv().await {
        writer.write(&frame).await?;
        while let Ok(frame) = rx.try_recv() {
            writer.write(&frame).await?;
        }
        writer.flush().await?;
    }
    writer.shutdown().await
}
