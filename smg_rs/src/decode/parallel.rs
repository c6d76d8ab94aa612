//! Parallel GOP decoding: contiguous runs of whole GOPs decoded at once by one
//! single-threaded decoder each, frames handed on in frame order.
use super::deliver::check_decode_errors;
use super::pass::{NonRefSkipper, Pass, PassRun};
use super::seek::Seeker;
use super::{DecodeStats, RgbFrame, VideoDecoder};
use crate::error::{Result, SmgError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// At most this many parallel GOP workers, whatever the thread budget.
pub(super) const MAX_GOP_WORKERS: usize = 16;
/// Decoded frames waiting for earlier groups, over all parallel workers.
const PARALLEL_BUFFER_BYTES: usize = 512 << 20;

/// What one parallel worker did.
struct GroupReport {
    stats: DecodeStats,
    decode_errors: usize,
    /// The group could not be finished as a single decoder would have: decode in order instead.
    fallback: bool,
}

impl VideoDecoder<'_> {
    /// Decodes `groups` (contiguous runs of whole GOPs, in presentation order) at once, one
    /// OS thread per group, each with its own input, single-threaded decoder and converter,
    /// seeking within its group as `decode_single` does. Frames come back over channels and
    /// reach `sink` on this thread group by group, so the order is the single decoder's. A
    /// damaged wanted frame fails the call as on one decoder (each worker applies the same
    /// rule to its GOPs). Only the last group serves indices past the end of the decodable
    /// stream with the last decoded frame; any other anomaly (a seek that misses, an earlier group running out of
    /// stream) stops every worker and decodes the frames not yet delivered in order, from the
    /// start, with one decoder.
    pub(super) fn decode_parallel(
        &self,
        wanted: BTreeMap<usize, Vec<usize>>,
        groups: Vec<BTreeMap<usize, Vec<usize>>>,
        slots: usize,
        stats: &mut DecodeStats,
        sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>,
    ) -> Result<()> {
        let workers = groups.len();
        stats.workers = workers;
        // Frames of later groups wait in bounded channels: memory stays bounded, and a worker
        // that runs ahead blocks until the groups before it are delivered.
        let frame_bytes = (self.info.width as usize * self.info.height as usize * 3).max(1);
        let capacity = (PARALLEL_BUFFER_BYTES / workers / frame_bytes).clamp(2, 1024);
        let stop = AtomicBool::new(false);
        let mut delivered = vec![false; slots];
        let mut decode_errors = 0usize;
        let outcome: Result<bool> = std::thread::scope(|scope| {
            let (stop, keep) = (&stop, &wanted);
            let mut running = Vec::with_capacity(workers);
            for (g, group) in groups.into_iter().enumerate() {
                let (tx, rx) = mpsc::sync_channel::<(usize, RgbFrame)>(capacity);
                let is_last = g + 1 == workers;
                let handle = scope.spawn(move || self.decode_group(group, is_last, keep, tx, stop));
                running.push((rx, handle));
            }
            let mut running = running.into_iter();
            let mut outcome = Ok(false);
            for (rx, handle) in running.by_ref() {
                for (slot, frame) in rx.iter() {
                    delivered[slot] = true;
                    if let Err(e) = sink(slot, frame) {
                        outcome = Err(e);
                        break;
                    }
                }
                if outcome.is_err() {
                    break;
                }
                drop(rx);
                match handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                    Err(e) => outcome = Err(e),
                    Ok(report) => {
                        stats.packets_sent += report.stats.packets_sent;
                        stats.seeks += report.stats.seeks;
                        decode_errors += report.decode_errors;
                        if report.fallback {
                            outcome = Ok(true);
                        }
                    }
                }
                if !matches!(outcome, Ok(false)) {
                    break;
                }
            }
            // Whatever is still running is no longer needed: stop it and count what it did.
            stop.store(true, Ordering::Relaxed);
            for (rx, handle) in running {
                drop(rx);
                if let Ok(report) = handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                    stats.packets_sent += report.stats.packets_sent;
                    stats.seeks += report.stats.seeks;
                    decode_errors += report.decode_errors;
                }
            }
            outcome
        });
        if outcome? {
            stats.restarts += 1;
            let mut rest: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (&index, owners) in &wanted {
                for &slot in owners.iter().filter(|&&s| !delivered[s]) {
                    rest.entry(index).or_default().push(slot);
                }
            }
            return self.decode_single(rest, false, decode_errors, stats, sink);
        }
        check_decode_errors(decode_errors, stats.packets_sent.max(1))
    }

    /// One parallel worker: decodes `group` with a single-threaded decoder, sending frames to
    /// `tx`. `keep` (every index wanted by the call) decides which non-reference pictures may
    /// be dropped, so this decoder drops exactly what a single decoder would.
    fn decode_group(
        &self,
        group: BTreeMap<usize, Vec<usize>>,
        is_last: bool,
        keep: &BTreeMap<usize, Vec<usize>>,
        tx: mpsc::SyncSender<(usize, RgbFrame)>,
        stop: &AtomicBool,
    ) -> Result<GroupReport> {
        let (Some(keys), Some(pts)) = (&self.keyframes, self.frame_pts.as_deref()) else {
            return Err(SmgError::VideoDecode("internal: parallel decode without a keyframe index".into()));
        };
        let mut state = self.deliver_state(group, 0);
        let skipper = NonRefSkipper::new(self.codec_id, Some(pts), Some(keep));
        let mut seeker = Seeker::new(keys, pts);
        let mut stats = DecodeStats::default();
        // A closed channel means the caller gave up on this call: stop quietly.
        let mut send = |slot: usize, frame: RgbFrame| {
            tx.send((slot, frame)).map_err(|_| SmgError::VideoDecode("internal: parallel decode cancelled".into()))
        };
        let pass = self.decode_pass(&mut state, skipper.as_ref(), Some(&mut seeker), &mut stats, &mut send, PassRun { decoder_threads: 1, stop: Some(stop) });
        let mut report = GroupReport { stats, decode_errors: state.decode_errors, fallback: false };
        match pass? {
            Pass::SeekMissed => report.fallback = true,
            Pass::Stopped => {}
            Pass::Finished if state.wanted.is_empty() => {}
            // Indices past the end of the decodable stream take the stream's last decoded
            // frame, which only the group that decoded up to the end has.
            Pass::Finished if is_last && state.last.is_set() => state.finish(&mut send)?,
            Pass::Finished => report.fallback = true,
        }
        Ok(report)
    }

}
