//! The demux-only packet scan (frame count, timestamps, keyframes, average rate, as
//! TorchCodec's exact mode measures them), and the packet reader both the scan and the
//! decode passes use.
use super::check_deadline;
use super::stream::StreamHeader;
use crate::avio::ff_err;
use crate::error::{limit, Result, SmgError};
use crate::limits::Limits;
use ffmpeg_next as ff;
use ff::ffi;
use std::time::Instant;

/// The next packet of `input` into the reused `packet`. `av_read_frame` overwrites a packet without
/// releasing the payload it held, so the previous one is unreferenced first: without that every call
/// leaked all the packets it demuxed (RSS grew by about the input's size per call).
pub(super) fn read_packet(packet: &mut ff::Packet, input: &mut ff::format::context::Input) -> std::result::Result<(), ff::Error> {
    // SAFETY: `packet` owns a valid AVPacket; unreferencing leaves it blank and reusable.
    unsafe { ffi::av_packet_unref(ff::packet::Mut::as_mut_ptr(packet)) };
    packet.read(input)
}

/// What the scan found.
pub(super) struct Scan {
    pub num_frames: usize,
    /// Sorted presentation timestamps (stream time base) when every packet had one.
    pub frame_pts: Option<Vec<i64>>,
    /// Timestamps of the key packets (those with a timestamp).
    pub key_pts: Vec<i64>,
    /// Presentation time of each frame, seconds, sorted.
    pub frame_times: Vec<f64>,
    pub duration: f64,
    pub avg_fps: f64,
}

/// Reads every packet of the chosen stream without decoding, enforcing the frame, duration
/// and time limits.
pub(super) fn scan(
    input: &mut ff::format::context::Input,
    stream: &StreamHeader,
    container: &str,
    limits: &Limits,
    deadline: Instant,
) -> Result<Scan> {
    // Per packet, in demux order: its pts, else its dts (None when it has neither).
    let mut stamps: Vec<Option<i64>> = Vec::new();
    let mut durations: Vec<i64> = Vec::new();
    let mut key_pts: Vec<i64> = Vec::new();
    let mut all_have_pts = true;
    let mut packet = ff::Packet::empty();
    loop {
        check_deadline(deadline)?;
        match read_packet(&mut packet, input) {
            Ok(()) => {}
            Err(ff::Error::Eof) => break,
            Err(ff::Error::Other { errno: 11 }) => continue,
            Err(e) => {
                check_deadline(deadline)?;
                return Err(SmgError::VideoDecode(format!("corrupt or truncated container: {}", ff_err(e))));
            }
        }
        if packet.stream() != stream.index {
            continue;
        }
        if packet.is_corrupt() {
            return Err(SmgError::VideoDecode("truncated or corrupt video packet".into()));
        }
        if stamps.len() as u64 >= limits.max_source_frames {
            return limit(format!("video has more than max_source_frames={} frames", limits.max_source_frames));
        }
        if let (Some(p), true) = (packet.pts(), packet.is_key()) {
            key_pts.push(p);
        }
        all_have_pts &= packet.pts().is_some();
        stamps.push(packet.pts().or(packet.dts()));
        durations.push(packet.duration().max(0));
    }
    let count = stamps.len();
    if count == 0 {
        return Err(SmgError::VideoDecode("video stream has no frames".into()));
    }
    if stream.header_frames > 0 && (count as u64) < stream.header_frames && container.starts_with("mov") {
        return Err(SmgError::VideoDecode(format!(
            "truncated file: index lists {} frames, only {count} present",
            stream.header_frames
        )));
    }
    let tick = if stream.header_fps > 0.0 && stream.time_base > 0.0 {
        (1.0 / (stream.header_fps * stream.time_base)).round().max(1.0) as i64
    } else {
        1
    };
    let stamped = if stream.time_base > 0.0 { fill_missing(&stamps, &durations, tick) } else { None };
    let (frame_pts, frame_times, duration, avg_fps) = match stamped {
        Some((mut pts, end)) => {
            pts.sort_unstable();
            let begin = pts[0];
            let times: Vec<f64> = pts.iter().map(|&p| p as f64 * stream.time_base).collect();
            let duration = (end - begin) as f64 * stream.time_base;
            let fps = if duration > 0.0 { count as f64 / duration } else { stream.header_fps };
            // Only timestamps that all came from the file identify frames exactly (seeking,
            // frame matching); estimated ones are for reporting.
            (all_have_pts.then_some(pts), times, duration, fps)
        }
        None => {
            let fps = if stream.header_fps > 0.0 { stream.header_fps } else { 1.0 };
            let times = (0..count).map(|i| i as f64 / fps).collect();
            (None, times, count as f64 / fps, fps)
        }
    };
    if duration > limits.max_duration_s {
        return limit(format!("video lasts {duration:.1} s, above max_duration_s={}", limits.max_duration_s));
    }
    if !(avg_fps > 0.0) || !avg_fps.is_finite() {
        return Err(SmgError::VideoDecode("video has no usable frame rate".into()));
    }
    Ok(Scan { num_frames: count, frame_pts, key_pts, frame_times, duration, avg_fps })
}

/// Every packet's presentation timestamp plus the stream's end (last pts + its duration), with
/// the timestamps a damaged file lost (no pts and no dts) estimated from the packet before
/// them in demux order (its timestamp plus its duration, or one frame at the header rate),
/// so that the frames around a loss keep their real times. None when no packet has any.
fn fill_missing(stamps: &[Option<i64>], durations: &[i64], tick: i64) -> Option<(Vec<i64>, i64)> {
    let first = stamps.iter().position(|s| s.is_some())?;
    let step = |i: usize| if durations[i] > 0 { durations[i] } else { tick };
    let mut pts = vec![0i64; stamps.len()];
    // Packets before the first stamped one count back from it.
    pts[first] = stamps[first].unwrap();
    for i in (0..first).rev() {
        pts[i] = pts[i + 1].saturating_sub(step(i));
    }
    for i in first + 1..stamps.len() {
        pts[i] = stamps[i].unwrap_or_else(|| pts[i - 1].saturating_add(step(i - 1)));
    }
    let end = (0..pts.len()).map(|i| pts[i].saturating_add(durations[i])).max().unwrap_or(0);
    Some((pts, end))
}

#[cfg(test)]
mod tests {
    use super::fill_missing;

    #[test]
    fn lost_timestamps_are_estimated_from_their_neighbours() {
        let d = vec![40; 5];
        // all present: unchanged; end is the last pts plus its duration
        let all = [Some(0), Some(40), Some(80), Some(2000), Some(2040)];
        assert_eq!(fill_missing(&all, &d, 40), Some((vec![0, 40, 80, 2000, 2040], 2080)));
        // one lost after a gap of lost packets: the real times around it stay
        let lost = [Some(0), None, Some(80), Some(2000), None];
        assert_eq!(fill_missing(&lost, &d, 40), Some((vec![0, 40, 80, 2000, 2040], 2080)));
        // leading packets without timestamps, durations unknown: one header tick each
        assert_eq!(fill_missing(&[None, None, Some(100)], &[0, 0, 0], 25), Some((vec![50, 75, 100], 100)));
        assert_eq!(fill_missing(&[None, None], &[0, 0], 1), None);
    }
}
