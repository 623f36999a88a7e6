//! The sending end: input → frames → compressors → connections, with every
//! frame kept until the receiver has written it.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pareco_compress::Compression;
use pareco_proto::stream::{Encoding, StreamMessage, StreamRole};
use pareco_stream::outstanding::Outstanding;
use pareco_stream::stripe::Stripe;
use pareco_stream::{FRAME_SIZE, Tally};

use super::{LinkEvent, LinkTable, Links, PipeError, PipeOptions, PipeStats, PipeSummary, Rendezvous, abort};
use crate::frames::{Cut, Input, InputSide, Pending};

/// How often rates, the compression level and the peer's presence are checked.
const TICK: Duration = Duration::from_millis(100);

/// Sends `input` as a stream; returns once the receiver has written and
/// verified all of it.
pub async fn send(
    input: impl Read + Send + 'static,
    rendezvous: Rendezvous,
    compression: Compression,
    options: PipeOptions,
    stats: Arc<PipeStats>,
) -> Result<PipeSummary, PipeError> {
    let started = Instant::now();
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| std::io::Error::other(format!("no randomness for a stream id: {e}")))?;
    let (mut links, mut events) = Links::open(StreamRole::Sender, Some(id), rendezvous, options.clone());

    let cut = Cut { frame_size: FRAME_SIZE, mark_every: 0, skip_frames: 0 };
    let mut inputs = InputSide::start(input, cut, compression, options.buffer, stats.clone());

    let mut out: Outstanding<Pending> = Outstanding::default();
    let mut table = LinkTable::new(stats.clone());
    let mut stripe = Stripe::default();
    let mut end: Option<StreamMessage> = None;
    let mut tally: Option<Tally> = None;
    let mut received = 0u64;
    let mut acked = 0u64;
    // Whether frames waited for room on the links since the last tick (the
    // links, not the input, set the pace: -j auto judges only then).
    let mut waited = false;
    let mut tick = tokio::time::interval(TICK);
    let mut last_tick = Instant::now();
    // Since the last acknowledgement, the links lost and opened meanwhile:
    // a link that cuts every connection before a frame is through never
    // moves on (a peer that is gone lets no connection open: that is
    // `check_alive`'s to say).
    let (mut last_ack, mut lost, mut opened) = (Instant::now(), 0u64, 0u64);
    let result = loop {
        tokio::select! {
            Some(input) = inputs.events.recv() => match input {
                Input::Frame(seq, pending) => {
                    out.add(seq, pending);
                    received += 1;
                }
                Input::Mark { .. } => {}
                Input::End(t) => tally = Some(*t),
                Input::Failed(e) => {
                    table.broadcast(&StreamMessage::Abort { reason: format!("the sender's input failed: {e}") });
                    break Err(PipeError::Io(e));
                }
            },
            Some(event) = events.recv() => match event {
                LinkEvent::Opened(id, tx, _) => {
                    table.opened(id, tx);
                    stripe.open(id);
                    opened += 1;
                    if let Some(end) = &end {
                        table.send(id, end.clone());
                    }
                }
                LinkEvent::Message(_, StreamMessage::Ack { seq }) => {
                    if let Some((pending, Some(link))) = out.ack(seq) {
                        stripe.acked(link, pending.payload.len() as u64);
                        acked += pending.payload.len() as u64;
                        stats.acked.fetch_add(pending.raw_len as u64, Ordering::Relaxed);
                    }
                    (last_ack, lost, opened) = (Instant::now(), 0, 0);
                }
                LinkEvent::Message(_, StreamMessage::Done) => {
                    // The receiver checked count, length and digest against
                    // our End: everything arrived, whatever acknowledgements
                    // are still on their way on other connections.
                    if end.is_some() {
                        break Ok(());
                    }
                    break Err(PipeError::Protocol("the receiver said Done before the stream ended".into()));
                }
                LinkEvent::Message(_, StreamMessage::Abort { reason }) => break Err(PipeError::Aborted(reason)),
                LinkEvent::Message(id, other) => {
                    tracing::warn!("link {id}: unexpected {other:?} from the receiver");
                    break Err(PipeError::Protocol("unexpected message from the receiver".into()));
                }
                LinkEvent::Closed(id) => {
                    if table.closed(id) {
                        lost += 1;
                        stripe.close(id);
                        stats.resent_frames.fetch_add(out.orphan(id) as u64, Ordering::Relaxed);
                        links.replace();
                    }
                }
                LinkEvent::Failed(e) => break Err(e),
            },
            _ = tick.tick() => {
                stripe.tick(last_tick.elapsed());
                last_tick = Instant::now();
                if let Err(e) = table.check_alive(options.retry_for) {
                    break Err(e);
                }
                // (Frames waiting on a slow consumer lose no connection.)
                if lost > 0 && opened > 0 && !out.is_empty() && last_ack.elapsed() >= options.retry_for {
                    break Err(PipeError::NoProgress { waited: options.retry_for, lost });
                }
                inputs.observe();
                match links.retune(acked, std::mem::take(&mut waited)) {
                    more if more > 0 => links.more(more as usize),
                    fewer if fewer < 0 => stripe.retire(fewer.unsigned_abs()),
                    _ => {}
                }
            }
        }
        for link in stripe.drained() {
            table.retire(link);
        }
        if end.is_none()
            && let Some(t) = tally.as_ref().filter(|t| t.frames() == received)
        {
            let message = StreamMessage::End { frames: t.frames(), bytes: t.bytes(), digest: t.digest() };
            table.broadcast(&message);
            end = Some(message);
        }
        dispatch(&mut out, &table, &mut stripe, &stats);
        waited |= out.next_unsent().is_some();
    };
    if let Err(e) = &result {
        abort(&links, &mut table, e).await;
    }
    table.close_all();
    result?;
    let tally = tally.expect("the stream ended before the receiver said Done");
    Ok(stats.summary(&links.counters, &tally.digest(), started))
}

/// Sends frames waiting for a connection, in order, while a connection has
/// room for them.
fn dispatch(out: &mut Outstanding<Pending>, table: &LinkTable, stripe: &mut Stripe, stats: &PipeStats) {
    while let Some(next) = out.next_unsent() {
        let len = next.payload.len() as u64;
        let Some(link) = stripe.pick(len) else { return };
        let Some((seq, pending)) = out.send_next(link) else { return };
        table.send(
            link,
            StreamMessage::Data {
                seq,
                raw_len: pending.raw_len,
                encoding: pending.encoding,
                payload: pending.payload.clone(),
            },
        );
        stripe.sent(link, len);
        stats.payload_bytes.fetch_add(len, Ordering::Relaxed);
        if pending.encoding == Encoding::Zstd {
            stats.compressed_frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}
