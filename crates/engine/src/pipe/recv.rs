//! The receiving end: connections → decompressors → reorder buffer →
//! output, each frame acknowledged once written.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pareco_compress::{DecodeError, decode};
use pareco_proto::Digest;
use pareco_proto::stream::{StreamMessage, StreamRole};
use pareco_stream::FRAME_SIZE;
use pareco_stream::outstanding::LinkId;
use pareco_stream::reorder::{Offer, Reorder};
use tokio::sync::{Semaphore, mpsc};

use super::{LinkEvent, LinkTable, Links, PipeError, PipeOptions, PipeStats, PipeSummary, Rendezvous, abort};
use crate::frames::{OutputSide, Written};

/// The largest sender window the receiver adopts.
const MAX_PEER_WINDOW: u64 = 16 << 30;

/// How long the receiver waits, after its Done, for the sender to hang up.
const FAREWELL: Duration = Duration::from_secs(5);

/// Receives a stream into `output`; returns once all of it is written and
/// verified. On failure, what was written stays written (the stats say how
/// much) and the error says why the rest is missing.
pub async fn receive(
    output: impl Write + Send + 'static,
    rendezvous: Rendezvous,
    options: PipeOptions,
    stats: Arc<PipeStats>,
) -> Result<PipeSummary, PipeError> {
    let started = Instant::now();
    let (mut links, mut events) = Links::open(StreamRole::Receiver, None, rendezvous, options.clone());
    let mut output = OutputSide::<(u64, LinkId)>::start(output);
    let decoders = Arc::new(Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));
    let (decoded_tx, mut decoded) = mpsc::unbounded_channel::<(u64, LinkId, Result<Bytes, DecodeError>)>();

    // Frames out of turn are bounded by the sender's window; allow some slack.
    let mut reorder: Reorder<(Bytes, LinkId)> = Reorder::new(options.buffer + 8 * FRAME_SIZE);
    let mut table = LinkTable::new(stats.clone());
    let mut written_frames = 0u64;
    let mut end: Option<(u64, u64, Digest)> = None;
    let mut flushing = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let result = loop {
        tokio::select! {
            Some(event) = events.recv() => match event {
                LinkEvent::Opened(id, tx, window) => {
                    // Hold as much out of turn as the sender may have in
                    // flight, whatever this end's own --buffer says (within
                    // reason: a peer's word is not a licence to exhaust memory).
                    reorder.raise_limit((window.min(MAX_PEER_WINDOW) as usize).saturating_add(8 * FRAME_SIZE));
                    table.opened(id, tx);
                }
                LinkEvent::Message(id, StreamMessage::Data { seq, raw_len, encoding, payload }) => {
                    stats.payload_bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
                    if reorder.delivered(seq) {
                        table.send(id, StreamMessage::Ack { seq });
                        continue;
                    }
                    let (decoders, decoded_tx) = (decoders.clone(), decoded_tx.clone());
                    tokio::spawn(async move {
                        let _cpu = decoders.acquire_owned().await.expect("never closed");
                        let result = tokio::task::spawn_blocking(move || decode(encoding, payload, raw_len))
                            .await
                            .unwrap_or(Err(DecodeError { raw_len }));
                        let _ = decoded_tx.send((seq, id, result));
                    });
                }
                LinkEvent::Message(_, StreamMessage::End { frames, bytes, digest }) => match end {
                    Some(known) if known != (frames, bytes, digest) => {
                        break Err(PipeError::Protocol("two different ends for one stream".into()));
                    }
                    _ => end = Some((frames, bytes, digest)),
                },
                LinkEvent::Message(_, StreamMessage::Abort { reason }) => break Err(PipeError::Aborted(reason)),
                LinkEvent::Message(id, other) => {
                    tracing::warn!("link {id}: unexpected {other:?} from the sender");
                    break Err(PipeError::Protocol("unexpected message from the sender".into()));
                }
                LinkEvent::Closed(id) => {
                    if table.closed(id) && !flushing {
                        links.replace();
                    }
                }
                LinkEvent::Failed(e) => break Err(e),
            },
            Some((seq, link, result)) = decoded.recv() => match result {
                Ok(data) => {
                    let size = data.len();
                    match reorder.offer(seq, (data, link), size) {
                        Offer::Held | Offer::AlreadyHeld => {}
                        Offer::AlreadyDelivered => table.send(link, StreamMessage::Ack { seq }),
                        Offer::OverLimit => break Err(PipeError::Protocol(
                            "the sender has more in flight than this receiver's --buffer; give it at least the sender's".into(),
                        )),
                    }
                }
                Err(e) => break Err(PipeError::Corrupt(format!("frame {seq}: {e}"))),
            },
            Some(report) = output.written.recv() => match report {
                Ok(Written::Frame((seq, link), len)) => {
                    written_frames += 1;
                    stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
                    stats.frames.fetch_add(1, Ordering::Relaxed);
                    // On its own connection if it is still there, else any.
                    if table.links.contains_key(&link) {
                        table.send(link, StreamMessage::Ack { seq });
                    } else if let Some(any) = table.links.keys().next().copied() {
                        table.send(any, StreamMessage::Ack { seq });
                    }
                }
                Ok(Written::Part(len)) => {
                    stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
                }
                Ok(Written::Flushed(tally)) => {
                    // (Flushed only once the end is known.)
                    let Some((frames, bytes, digest)) = end else { unreachable!("flushed before the end") };
                    if !tally.matches(frames, bytes, &digest) {
                        table.broadcast(&StreamMessage::Abort { reason: "the stream arrived altered: its digest differs".into() });
                        break Err(PipeError::Corrupt(format!(
                            "the stream does not match what was sent ({} bytes in {} frames received, {bytes} in {frames} sent)",
                            tally.bytes(),
                            tally.frames()
                        )));
                    }
                    break Ok(tally);
                }
                Err(e) => {
                    table.broadcast(&StreamMessage::Abort { reason: format!("the receiver's output failed: {e}") });
                    break Err(PipeError::Io(e));
                }
            },
            _ = tick.tick() => {
                if let Err(e) = table.check_alive(options.retry_for) {
                    break Err(e);
                }
                // This end cannot see whether the sender's input keeps up;
                // a count that does not pay is taken back all the same.
                match links.retune(stats.payload_bytes.load(Ordering::Relaxed), true) {
                    more if more > 0 => links.more(more as usize),
                    fewer if fewer < 0 => {
                        // The newest go; the sender sends their frames again.
                        let mut open: Vec<LinkId> = table.links.keys().copied().collect();
                        open.sort_unstable();
                        for id in open.into_iter().rev().take(fewer.unsigned_abs()) {
                            table.retire(id);
                        }
                    }
                    _ => {}
                }
            }
        }
        // Feed the output, in order, as far as it takes.
        while output.has_room() {
            let Some((seq, (data, link))) = reorder.pop() else { break };
            let _ = output.try_write((seq, link), data);
        }
        if let Some((frames, _, _)) = end
            && written_frames == frames
            && !flushing
        {
            flushing = true;
            output.flush().await;
        }
    };
    let tally = match result {
        Ok(tally) => tally,
        Err(e) => {
            // Tell the sender at once (it would otherwise wait --retry-for),
            // stop writing, and count what the output thread still completes,
            // so that the bytes reported are exactly the bytes delivered.
            abort(&links, &mut table, &e).await;
            output.stop(&stats.bytes, FAREWELL).await;
            return Err(e);
        }
    };
    // Everything is out: tell the sender, and let it hang up first.
    table.broadcast(&StreamMessage::Done);
    let _ = tokio::time::timeout(FAREWELL, async {
        while let Some(event) = events.recv().await {
            if let LinkEvent::Closed(id) = event {
                table.closed(id);
                if table.links.is_empty() {
                    return;
                }
            }
        }
    })
    .await;
    Ok(stats.summary(&links.counters, &tally.digest(), started))
}
