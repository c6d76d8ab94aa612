//! Video decoding with the system FFmpeg: stream selection and allow-lists, a demux-only scan
//! (frame count, timestamps, average rate, as TorchCodec's exact mode measures them), then a
//! decode that converts (to RGB24, rotated for display) only the requested frames, jumps over
//! whole GOPs nobody asked for (keyframe seeks), decodes disjoint runs of GOPs on several
//! threads at once, and lets H.264/HEVC decoders skip non-reference pictures that are not
//! requested.
use crate::avio::{self, ff_err, Source};
use crate::error::{limit, Result, SmgError};
use crate::limits::Limits;
use ffmpeg_next as ff;
use ff::ffi;
use std::collections::BTreeMap;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Once};
use std::time::{Duration, Instant};

mod seek;
use seek::{accept_landing, decode_cost, parallel_pays_off, sequential_decode_forced, split_by_gop, KeyframeIndex, Seeker};
#[cfg(test)]
use seek::{landing, Keyframe, Landing};

static INIT: Once = Once::new();

pub(crate) fn init_ffmpeg() {
    INIT.call_once(|| {
        let _ = ff::init();
        // Malformed inputs are an expected case: errors come back typed, not on stderr.
        ff::util::log::set_level(ff::util::log::Level::Fatal);
    });
}

/// Codecs accepted for the video stream.
pub const ALLOWED_CODECS: &[ffi::AVCodecID] = &[
    ffi::AVCodecID::AV_CODEC_ID_H264,
    ffi::AVCodecID::AV_CODEC_ID_HEVC,
    ffi::AVCodecID::AV_CODEC_ID_VP8,
    ffi::AVCodecID::AV_CODEC_ID_VP9,
    ffi::AVCodecID::AV_CODEC_ID_AV1,
    ffi::AVCodecID::AV_CODEC_ID_MPEG4,
    ffi::AVCodecID::AV_CODEC_ID_MPEG2VIDEO,
    ffi::AVCodecID::AV_CODEC_ID_MPEG1VIDEO,
    ffi::AVCodecID::AV_CODEC_ID_MJPEG,
];

/// Codecs accepted for still images.
pub const IMAGE_CODECS: &[ffi::AVCodecID] = &[
    ffi::AVCodecID::AV_CODEC_ID_PNG,
    ffi::AVCodecID::AV_CODEC_ID_MJPEG,
    ffi::AVCodecID::AV_CODEC_ID_WEBP,
    ffi::AVCodecID::AV_CODEC_ID_BMP,
];

#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Decoding threads (0 or 1 = single-threaded): FFmpeg frame/slice threads of one decoder,
    /// or, when the wanted frames lie under several keyframes and seeking is possible, that
    /// many single-threaded decoders on disjoint runs of GOPs.
    pub threads: usize,
    pub limits: Limits,
    /// Accept still-image formats (PNG, JPEG, WebP, BMP) instead of video containers.
    pub images: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self { threads: 1, limits: Limits::default(), images: false }
    }
}

impl DecodeOptions {
    fn formats(&self) -> &'static str {
        if self.images { avio::IMAGE_FORMATS } else { avio::ALLOWED_FORMATS }
    }
    fn codecs(&self) -> &'static [ffi::AVCodecID] {
        if self.images { IMAGE_CODECS } else { ALLOWED_CODECS }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Display size (after rotation).
    pub width: u32,
    pub height: u32,
    /// Clockwise rotation applied to decoded frames (0, 90, 180, 270).
    pub rotation_cw: u32,
    /// Frames found by the packet scan.
    pub num_frames: usize,
    /// num_frames / (end - begin) of the scanned timestamps, or the header rate.
    pub avg_fps: f64,
    /// end - begin of the scanned timestamps, seconds.
    pub duration: f64,
    /// Presentation time of each frame (presentation order), seconds.
    pub frame_times: Vec<f64>,
    pub codec: String,
    pub container: String,
}

/// One decoded frame, packed RGB24 (`height * width * 3` bytes).
#[derive(Debug, Clone)]
pub struct RgbFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
    /// Frame index (presentation order) this frame was delivered for.
    pub index: usize,
    pub pts_seconds: f64,
}

pub struct VideoDecoder<'a> {
    source: Source<'a>,
    codec_id: ffi::AVCodecID,
    opts: DecodeOptions,
    deadline: Instant,
    stream_index: usize,
    info: VideoInfo,
    /// Sorted presentation timestamps (stream time base) when every packet had one.
    frame_pts: Option<Vec<i64>>,
    /// Keyframes by presentation index, when every packet had a distinct timestamp.
    keyframes: Option<KeyframeIndex>,
    stats: DecodeStats,
}

/// What the last `decode_selected` call did (diagnostics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Video packets sent to the decoder, over all passes.
    pub packets_sent: usize,
    /// Seeks to a keyframe attempted.
    pub seeks: usize,
    /// Times a seek misbehaved (or a parallel group could not finish) and decoding restarted
    /// from the start, in order, with one decoder (0 or 1).
    pub restarts: usize,
    /// Decoders that ran at once on disjoint GOP runs (1: one decoder; 0: nothing to decode).
    pub workers: usize,
}

fn rotation_from_matrix(m: &[i32; 9]) -> u32 {
    // Counter-clockwise display angle, as av_display_rotation_get computes it.
    let f = |v: i32| v as f64 / 65536.0;
    let s0 = f(m[0]).hypot(f(m[3]));
    let s1 = f(m[1]).hypot(f(m[4]));
    if s0 == 0.0 || s1 == 0.0 {
        return 0;
    }
    let ccw = -(f(m[1]) / s1).atan2(f(m[0]) / s0).to_degrees();
    // Frames must be turned clockwise by -ccw to display upright.
    let cw = (-ccw.round()).rem_euclid(360.0);
    match cw as i64 {
        a if (a - 90).abs() <= 1 => 90,
        a if (a - 180).abs() <= 1 => 180,
        a if (a - 270).abs() <= 1 => 270,
        _ => 0,
    }
}

fn check_deadline(deadline: Instant) -> Result<()> {
    if Instant::now() > deadline {
        return limit("decoding exceeded timeout_s");
    }
    Ok(())
}

impl<'a> VideoDecoder<'a> {
    /// Opens the source and scans its packets. No frame is decoded here.
    pub fn open(source: Source<'a>, opts: DecodeOptions) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs_f64(opts.limits.timeout_s.max(0.0));
        let limits = &opts.limits;
        let mut input = avio::open(&source, limits, deadline, opts.formats())?;
        let container = input.input().format().name().to_string();
        let (stream_index, codec_id, codec, width, height, rotation_cw, time_base, header_fps, header_frames, header_duration) = {
            let inp = input.input();
            let stream = inp
                .streams()
                .filter(|s| s.parameters().medium() == ff::media::Type::Video)
                .filter(|s| !s.disposition().contains(ff::format::stream::Disposition::ATTACHED_PIC))
                .max_by_key(|s| {
                    let p = s.parameters();
                    unsafe { (*p.as_ptr()).width as i64 * (*p.as_ptr()).height as i64 }
                })
                .ok_or_else(|| SmgError::UnsupportedFormat("input has no video stream".into()))?;
            let par = stream.parameters();
            let codec_id = unsafe { (*par.as_ptr()).codec_id };
            let codec = format!("{:?}", par.id()).to_lowercase();
            if !opts.codecs().contains(&codec_id) {
                return Err(SmgError::UnsupportedFormat(format!(
                    "codec {codec} is not allowed (videos: h264, hevc, vp8, vp9, av1, mpeg4, mpeg1/2, mjpeg; images: png, jpeg, webp, bmp)"
                )));
            }
            let (w, h) = unsafe { ((*par.as_ptr()).width.max(0) as u32, (*par.as_ptr()).height.max(0) as u32) };
            let mut rot = 0;
            for sd in stream.side_data() {
                if sd.kind() == ff::codec::packet::side_data::Type::DisplayMatrix && sd.data().len() >= 36 {
                    let d = sd.data();
                    let mut m = [0i32; 9];
                    for (i, v) in m.iter_mut().enumerate() {
                        *v = i32::from_ne_bytes(d[i * 4..i * 4 + 4].try_into().unwrap());
                    }
                    rot = rotation_from_matrix(&m);
                }
            }
            let tb = stream.time_base();
            let tb = if tb.denominator() != 0 { tb.numerator() as f64 / tb.denominator() as f64 } else { 0.0 };
            let afr = stream.avg_frame_rate();
            let rfr = stream.rate();
            let fps_of = |r: ff::Rational| {
                if r.denominator() != 0 && r.numerator() > 0 { r.numerator() as f64 / r.denominator() as f64 } else { 0.0 }
            };
            let header_fps = if fps_of(afr) > 0.0 { fps_of(afr) } else { fps_of(rfr) };
            let header_duration = if stream.duration() > 0 && tb > 0.0 {
                stream.duration() as f64 * tb
            } else if inp.duration() > 0 {
                inp.duration() as f64 / ffi::AV_TIME_BASE as f64
            } else {
                0.0
            };
            (stream.index(), codec_id, codec, w, h, rot, tb, header_fps, stream.frames().max(0) as u64, header_duration)
        };
        limits.check_frame_size(width, height)?;
        if header_duration > limits.max_duration_s {
            return limit(format!(
                "video lasts {header_duration:.1} s, above max_duration_s={}",
                limits.max_duration_s
            ));
        }
        if header_frames > limits.max_source_frames {
            return limit(format!(
                "video has {header_frames} frames, above max_source_frames={}",
                limits.max_source_frames
            ));
        }

        // Demux-only scan: frame count and timestamps without decoding.
        let mut pts: Vec<i64> = Vec::new();
        let mut key_pts: Vec<i64> = Vec::new();
        let mut all_have_pts = true;
        let mut count = 0usize;
        let (mut begin, mut end) = (i64::MAX, i64::MIN);
        let mut packet = ff::Packet::empty();
        loop {
            check_deadline(deadline)?;
            match read_packet(&mut packet, input.input()) {
                Ok(()) => {}
                Err(ff::Error::Eof) => break,
                Err(ff::Error::Other { errno: 11 }) => continue,
                Err(e) => {
                    if Instant::now() > deadline {
                        return limit("decoding exceeded timeout_s");
                    }
                    return Err(SmgError::VideoDecode(format!("corrupt or truncated container: {}", ff_err(e))));
                }
            }
            if packet.stream() != stream_index {
                continue;
            }
            if packet.is_corrupt() {
                return Err(SmgError::VideoDecode("truncated or corrupt video packet".into()));
            }
            count += 1;
            if count as u64 > limits.max_source_frames {
                return limit(format!(
                    "video has more than max_source_frames={} frames",
                    limits.max_source_frames
                ));
            }
            match packet.pts() {
                Some(p) => {
                    pts.push(p);
                    if packet.is_key() {
                        key_pts.push(p);
                    }
                    begin = begin.min(p);
                    end = end.max(p.saturating_add(packet.duration().max(0)));
                }
                None => all_have_pts = false,
            }
        }
        if count == 0 {
            return Err(SmgError::VideoDecode("video stream has no frames".into()));
        }
        if header_frames > 0 && (count as u64) < header_frames && container.starts_with("mov") {
            return Err(SmgError::VideoDecode(format!(
                "truncated file: index lists {header_frames} frames, only {count} present"
            )));
        }
        let (frame_pts, frame_times, duration, avg_fps) = if all_have_pts && time_base > 0.0 {
            pts.sort_unstable();
            let times: Vec<f64> = pts.iter().map(|&p| p as f64 * time_base).collect();
            let duration = (end - begin) as f64 * time_base;
            let fps = if duration > 0.0 { count as f64 / duration } else { header_fps };
            (Some(pts), times, duration, fps)
        } else {
            let fps = if header_fps > 0.0 { header_fps } else { 1.0 };
            let times = (0..count).map(|i| i as f64 / fps).collect();
            (None, times, count as f64 / fps, fps)
        };
        if duration > limits.max_duration_s {
            return limit(format!("video lasts {duration:.1} s, above max_duration_s={}", limits.max_duration_s));
        }
        if !(avg_fps > 0.0) || !avg_fps.is_finite() {
            return Err(SmgError::VideoDecode("video has no usable frame rate".into()));
        }
        let (dw, dh) = if rotation_cw % 180 == 90 { (height, width) } else { (width, height) };
        let info = VideoInfo {
            width: dw,
            height: dh,
            rotation_cw,
            num_frames: count,
            avg_fps,
            duration,
            frame_times,
            codec,
            container,
        };
        drop(input);
        let keyframes = frame_pts.as_deref().and_then(|p| KeyframeIndex::new(p, key_pts));
        let stats = DecodeStats::default();
        Ok(Self { source, codec_id, opts, deadline, stream_index, info, frame_pts, keyframes, stats })
    }

    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    pub fn last_decode_stats(&self) -> DecodeStats {
        self.stats
    }

    /// Decodes the stream in order and hands `sink(slot, frame)` the frame for every
    /// `indices[slot]` (indices may repeat or be unordered), in increasing index order. A frame
    /// index that the decoder never produces (damaged stream) is served by the next decoded
    /// frame, or the last one. Runs of whole GOPs before the next wanted frame are skipped by
    /// seeking to the keyframe it depends on; if a seek misbehaves, the rest is decoded again
    /// from the start, in order. With `threads >= 2` and wanted frames under several
    /// keyframes, contiguous runs of GOPs are decoded at once by one single-threaded decoder
    /// each (see `decode_parallel`) when the runs' work is even enough for that to beat one
    /// decoder with frame threads (`seek::parallel_pays_off`).
    pub fn decode_selected(
        &mut self,
        indices: &[usize],
        mut sink: impl FnMut(usize, RgbFrame) -> Result<()>,
    ) -> Result<()> {
        let n = self.info.num_frames;
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return crate::error::invalid(format!("frame index {bad} out of range (video has {n} frames)"));
        }
        if indices.is_empty() {
            self.stats = DecodeStats::default();
            return Ok(());
        }
        // frame index -> slots wanting it, in presentation order
        let mut wanted: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (slot, &i) in indices.iter().enumerate() {
            wanted.entry(i).or_default().push(slot);
        }
        let seeking = self.keyframes.is_some() && self.frame_pts.is_some() && !sequential_decode_forced();
        let groups = match &self.keyframes {
            Some(keys) if seeking => {
                let groups = split_by_gop(keys, &wanted, self.opts.threads.min(MAX_GOP_WORKERS));
                let costs: Vec<usize> = groups.iter().map(|g| decode_cost(keys, g)).collect();
                if parallel_pays_off(&costs, self.opts.threads) { groups } else { Vec::new() }
            }
            _ => Vec::new(),
        };
        let mut stats = DecodeStats::default();
        let result = if groups.len() >= 2 {
            self.decode_parallel(wanted, groups, indices.len(), &mut stats, &mut sink)
        } else {
            stats.workers = 1;
            self.decode_single(wanted, seeking, 0, &mut stats, &mut sink)
        };
        self.stats = stats;
        result
    }

    fn deliver_state(&self, wanted: BTreeMap<usize, Vec<usize>>, decode_errors: usize) -> DeliverState<'_> {
        DeliverState {
            wanted,
            frame_pts: self.frame_pts.as_deref(),
            counter: 0,
            info: &self.info,
            converter: Converter::default(),
            last: LastFrame::new(),
            decode_errors,
        }
    }

    /// One decoder (FFmpeg threads = `opts.threads`) walks every wanted frame. `prior_errors`:
    /// decode errors already counted for this call (a parallel attempt that fell back here).
    fn decode_single(
        &self,
        wanted: BTreeMap<usize, Vec<usize>>,
        seeking: bool,
        prior_errors: usize,
        stats: &mut DecodeStats,
        sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>,
    ) -> Result<()> {
        let mut state = self.deliver_state(wanted, prior_errors);
        let skipper = NonRefSkipper::new(self.codec_id, self.frame_pts.as_deref(), None);
        let mut seeker = match (&self.keyframes, self.frame_pts.as_deref()) {
            (Some(keys), Some(pts)) if seeking => Some(Seeker::new(keys, pts)),
            _ => None,
        };
        let run = PassRun { decoder_threads: self.opts.threads, stop: None };
        let passes = loop {
            match self.decode_pass(&mut state, skipper.as_ref(), seeker.as_mut(), stats, sink, run) {
                // Correctness first: whatever a seek did, decode the rest from the start, in order.
                Ok(Pass::SeekMissed) => {
                    seeker = None;
                    stats.restarts += 1;
                }
                other => break other,
            }
        };
        passes?;
        state.check_errors(stats.packets_sent.max(1))?;
        state.flush_with_last(sink)
    }

    /// Decodes `groups` (contiguous runs of whole GOPs, in presentation order) at once, one
    /// OS thread per group, each with its own input, single-threaded decoder and converter,
    /// seeking within its group as `decode_single` does. Frames come back over channels and
    /// reach `sink` on this thread group by group, so the order is the single decoder's. Only
    /// the last group serves indices past the end of the decodable stream with the last
    /// decoded frame; any other anomaly (a seek that misses, an earlier group running out of
    /// stream) stops every worker and decodes the frames not yet delivered in order, from the
    /// start, with one decoder.
    fn decode_parallel(
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
            Pass::Finished if is_last && state.last.is_set() => state.flush_with_last(&mut send)?,
            Pass::Finished => report.fallback = true,
        }
        Ok(report)
    }

    /// Takes every frame the decoder has ready, checks it against a pending seek and delivers
    /// the wanted ones; `each_frame_deadline` also checks the deadline per frame (the end-of-stream
    /// drain, where no packet loop does).
    fn drain(
        &self,
        decoder: &mut ff::decoder::Video,
        frame: &mut ff::frame::Video,
        state: &mut DeliverState<'_>,
        mut seeker: Option<&mut Seeker<'_>>,
        sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>,
        each_frame_deadline: bool,
    ) -> Result<Drained> {
        loop {
            if each_frame_deadline {
                check_deadline(self.deadline)?;
            }
            match decoder.receive_frame(frame) {
                Ok(()) => {
                    if !accept_landing(seeker.as_deref_mut(), frame) {
                        return Ok(Drained::SeekMissed);
                    }
                    state.on_frame(frame, sink)?;
                    if state.wanted.is_empty() {
                        return Ok(Drained::AllServed);
                    }
                }
                Err(ff::Error::Other { errno: 11 }) | Err(ff::Error::Eof) => return Ok(Drained::NeedsInput),
                Err(_) => {
                    state.decode_errors += 1;
                    return Ok(Drained::NeedsInput);
                }
            }
        }
    }

    /// One pass over a freshly opened input: demux, (seek,) decode and deliver until every
    /// wanted frame is served or the stream ends.
    fn decode_pass(
        &self,
        state: &mut DeliverState<'_>,
        skipper: Option<&NonRefSkipper<'_>>,
        mut seeker: Option<&mut Seeker<'_>>,
        stats: &mut DecodeStats,
        sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>,
        run: PassRun<'_>,
    ) -> Result<Pass> {
        let limits = &self.opts.limits;
        let mut input = avio::open(&self.source, limits, self.deadline, self.opts.formats())?;
        let mut decoder = {
            let stream = input
                .input()
                .stream(self.stream_index)
                .ok_or_else(|| SmgError::VideoDecode("video stream vanished on reopen".into()))?;
            let mut ctx = ff::codec::context::Context::from_parameters(stream.parameters())
                .map_err(|e| SmgError::VideoDecode(format!("cannot set up decoder: {}", ff_err(e))))?;
            unsafe {
                let raw = ctx.as_mut_ptr();
                (*raw).thread_count = run.decoder_threads.clamp(1, 16) as i32;
                (*raw).thread_type = (ffi::FF_THREAD_FRAME | ffi::FF_THREAD_SLICE) as i32;
                (*raw).max_pixels = limits.max_frame_pixels.min(i32::MAX as u64) as i64;
                (*raw).pkt_timebase = (*stream.as_ptr()).time_base;
            }
            ctx.decoder()
                .video()
                .map_err(|e| SmgError::VideoDecode(format!("cannot open decoder: {}", ff_err(e))))?
        };
        let mut packet = ff::Packet::empty();
        let mut frame = ff::frame::Video::empty();
        'demux: loop {
            check_deadline(self.deadline)?;
            if run.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Ok(Pass::Stopped);
            }
            if state.wanted.is_empty() {
                break;
            }
            if let Some(seeker) = seeker.as_deref_mut() {
                let next_wanted = *state.wanted.keys().next().expect("wanted is not empty");
                if let Some(key) = seeker.keys.jump_target(next_wanted, seeker.next_unsent) {
                    let ret = unsafe {
                        ffi::av_seek_frame(
                            input.input().as_mut_ptr(),
                            self.stream_index as i32,
                            key.pts,
                            ffi::AVSEEK_FLAG_BACKWARD,
                        )
                    };
                    stats.seeks += 1;
                    if ret < 0 {
                        check_deadline(self.deadline)?;
                        return Ok(Pass::SeekMissed);
                    }
                    decoder.flush();
                    seeker.jumped(key);
                }
            }
            match read_packet(&mut packet, input.input()) {
                Ok(()) => {}
                Err(ff::Error::Eof) => break,
                Err(ff::Error::Other { errno: 11 }) => continue,
                Err(e) => {
                    check_deadline(self.deadline)?;
                    return Err(SmgError::VideoDecode(format!("corrupt or truncated container: {}", ff_err(e))));
                }
            }
            if packet.stream() != self.stream_index {
                continue;
            }
            stats.packets_sent += 1;
            if let Some(seeker) = seeker.as_deref_mut() {
                seeker.sent(packet.pts());
            }
            if let Some(skipper) = skipper {
                let discard = skipper.discard_for(packet.pts(), &state.wanted);
                unsafe { (*decoder.as_mut_ptr()).skip_frame = discard };
            }
            if decoder.send_packet(&packet).is_err() {
                state.decode_errors += 1;
            }
            match self.drain(&mut decoder, &mut frame, state, seeker.as_deref_mut(), sink, false)? {
                Drained::AllServed => break 'demux,
                Drained::SeekMissed => return Ok(Pass::SeekMissed),
                Drained::NeedsInput => {}
            }
            state.check_errors(stats.packets_sent)?;
        }
        if !state.wanted.is_empty() {
            let _ = decoder.send_eof();
            if let Drained::SeekMissed = self.drain(&mut decoder, &mut frame, state, seeker.as_deref_mut(), sink, true)? {
                return Ok(Pass::SeekMissed);
            }
        }
        // A seek whose keyframe never came out must not let older frames stand in for later ones.
        if seeker.is_some_and(|s| s.unconfirmed.is_some()) && !state.wanted.is_empty() {
            return Ok(Pass::SeekMissed);
        }
        drop(decoder);
        drop(input);
        Ok(Pass::Finished)
    }
}

/// Why [`VideoDecoder::drain`] stopped taking frames from the decoder.
enum Drained {
    /// The decoder wants more input (or is at its end).
    NeedsInput,
    /// Every wanted frame has been delivered.
    AllServed,
    /// A frame showed that the last seek did not land on its keyframe.
    SeekMissed,
}

enum Pass {
    Finished,
    /// A seek failed or landed elsewhere than on its keyframe.
    SeekMissed,
    /// A parallel worker was told to stop.
    Stopped,
}

/// How a decode pass runs: FFmpeg threads of its decoder, and the flag that stops a parallel worker.
#[derive(Clone, Copy)]
struct PassRun<'s> {
    decoder_threads: usize,
    stop: Option<&'s AtomicBool>,
}

/// At most this many parallel GOP workers, whatever the thread budget.
const MAX_GOP_WORKERS: usize = 16;
/// Decoded frames waiting for earlier groups, over all parallel workers.
const PARALLEL_BUFFER_BYTES: usize = 512 << 20;

/// What one parallel worker did.
struct GroupReport {
    stats: DecodeStats,
    decode_errors: usize,
    /// The group could not be finished as a single decoder would have: decode in order instead.
    fallback: bool,
}

/// Lets the decoder drop non-reference pictures nobody asked for. A non-reference picture is
/// never used to predict another, so discarding it leaves every other decoded picture
/// bit-identical; it is only discarded when its own packet (identified by its unique
/// presentation timestamp) is not a requested frame, so no requested frame can go missing.
struct NonRefSkipper<'s> {
    frame_pts: &'s [i64],
    /// Every index the call wants (parallel workers); None: the frames still wanted.
    keep: Option<&'s BTreeMap<usize, Vec<usize>>>,
}

impl<'s> NonRefSkipper<'s> {
    fn new(
        codec_id: ffi::AVCodecID,
        frame_pts: Option<&'s [i64]>,
        keep: Option<&'s BTreeMap<usize, Vec<usize>>>,
    ) -> Option<Self> {
        if sequential_decode_forced() {
            return None;
        }
        // Codecs whose FFmpeg decoders honour skip_frame=NONREF by dropping exactly the
        // pictures no other picture references (H.264 nal_ref_idc == 0, HEVC sub-layer non-refs).
        let supported = matches!(codec_id, ffi::AVCodecID::AV_CODEC_ID_H264 | ffi::AVCodecID::AV_CODEC_ID_HEVC);
        let frame_pts = frame_pts?;
        // Packet -> frame index must be one-to-one, else a dropped packet could be a wanted frame.
        let unique = frame_pts.windows(2).all(|w| w[0] < w[1]);
        (supported && unique).then_some(Self { frame_pts, keep })
    }

    fn discard_for(&self, pts: Option<i64>, wanted: &BTreeMap<usize, Vec<usize>>) -> ffi::AVDiscard {
        let keep = ffi::AVDiscard::AVDISCARD_DEFAULT;
        let Some(p) = pts else { return keep };
        match self.frame_pts.binary_search(&p) {
            Ok(index) if !self.keep.unwrap_or(wanted).contains_key(&index) => ffi::AVDiscard::AVDISCARD_NONREF,
            _ => keep,
        }
    }
}

struct DeliverState<'s> {
    wanted: BTreeMap<usize, Vec<usize>>,
    frame_pts: Option<&'s [i64]>,
    counter: usize,
    info: &'s VideoInfo,
    converter: Converter,
    /// A reference to the most recent decoded frame, converted only if it is needed as a
    /// stand-in for frames the decoder never produced.
    last: LastFrame,
    decode_errors: usize,
}

/// The next packet of `input` into the reused `packet`. `av_read_frame` overwrites a packet without
/// releasing the payload it held, so the previous one is unreferenced first: without that every call
/// leaked all the packets it demuxed (RSS grew by about the input's size per call).
fn read_packet(packet: &mut ff::Packet, input: &mut ff::format::context::Input) -> std::result::Result<(), ff::Error> {
    // SAFETY: `packet` owns a valid AVPacket; unreferencing leaves it blank and reusable.
    unsafe { ffi::av_packet_unref(ff::packet::Mut::as_mut_ptr(packet)) };
    packet.read(input)
}

/// A few damaged packets are tolerated (streams cut mid-GOP); a mostly broken stream is not.
fn check_decode_errors(errors: usize, packets: usize) -> Result<()> {
    if errors > 8 && errors * 4 > packets {
        return Err(SmgError::VideoDecode(format!("stream is damaged: {errors} decode errors in {packets} packets")));
    }
    Ok(())
}

struct LastFrame(*mut ffi::AVFrame);

impl LastFrame {
    fn new() -> Self {
        Self(unsafe { ffi::av_frame_alloc() })
    }
    fn keep(&mut self, frame: &ff::frame::Video) {
        unsafe {
            ffi::av_frame_unref(self.0);
            if ffi::av_frame_ref(self.0, frame.as_ptr()) < 0 {
                ffi::av_frame_unref(self.0);
            }
        }
    }
    fn is_set(&self) -> bool {
        !self.0.is_null() && unsafe { (*self.0).width > 0 && !(*self.0).data[0].is_null() }
    }
}

impl Drop for LastFrame {
    fn drop(&mut self) {
        unsafe { ffi::av_frame_free(&mut self.0) };
    }
}

impl DeliverState<'_> {
    fn check_errors(&self, packets: usize) -> Result<()> {
        check_decode_errors(self.decode_errors, packets)
    }

    fn deliver(
        &mut self,
        raw: *const ffi::AVFrame,
        covered: usize,
        sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>,
    ) -> Result<()> {
        let ready: Vec<usize> = self.wanted.range(..=covered).map(|(&i, _)| i).collect();
        if ready.is_empty() {
            return Ok(());
        }
        let (w, h, data) = self.converter.convert(raw, self.info)?;
        let total: usize = ready.iter().map(|i| self.wanted[i].len()).sum();
        let mut data = Some(data);
        let mut served = 0;
        for index in ready {
            let slots = self.wanted.remove(&index).unwrap_or_default();
            for slot in slots {
                served += 1;
                let bytes = if served == total { data.take().unwrap() } else { data.as_ref().unwrap().clone() };
                let pts_seconds = self.info.frame_times[index];
                sink(slot, RgbFrame { width: w, height: h, data: bytes, index, pts_seconds })?;
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: &ff::frame::Video, sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>) -> Result<()> {
        let position = self.counter;
        self.counter += 1;
        // The largest frame index this decoded frame stands for: by timestamp when the
        // scan found one for every packet, else by output position.
        let covered = match (self.frame_pts, frame.timestamp()) {
            (Some(pts), Some(p)) => match pts.partition_point(|&q| q <= p) {
                0 => return Ok(()),
                k => k - 1,
            },
            _ => position,
        };
        self.last.keep(frame);
        self.deliver(unsafe { frame.as_ptr() }, covered, sink)
    }

    /// Serves every still-wanted index with the last decoded frame.
    fn flush_with_last(&mut self, sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>) -> Result<()> {
        if self.wanted.is_empty() {
            return Ok(());
        }
        if !self.last.is_set() {
            return Err(SmgError::VideoDecode("no frame could be decoded".into()));
        }
        let raw = self.last.0 as *const ffi::AVFrame;
        self.deliver(raw, usize::MAX, sink)
    }
}

/// RGB24 conversion (swscale) + display rotation, with a context cached per input format.
#[derive(Default)]
struct Converter {
    sws: Option<(*mut ffi::SwsContext, (i32, u32, u32, i32, i32))>,
}

impl Drop for Converter {
    fn drop(&mut self) {
        if let Some((ctx, _)) = self.sws.take() {
            unsafe { ffi::sws_freeContext(ctx) };
        }
    }
}

impl Converter {
    fn convert(&mut self, raw: *const ffi::AVFrame, info: &VideoInfo) -> Result<(u32, u32, Vec<u8>)> {
        let (w, h) = unsafe { ((*raw).width.max(0) as u32, (*raw).height.max(0) as u32) };
        let (cw, ch) = if info.rotation_cw % 180 == 90 { (info.height, info.width) } else { (info.width, info.height) };
        if w == 0 || h == 0 {
            return Err(SmgError::VideoDecode("decoder returned an empty frame".into()));
        }
        if (w as u64) * (h as u64) > 7680 * 4320 * 4 {
            return limit("decoded frame is larger than the frame limit");
        }
        let fmt = unsafe { (*raw).format };
        let (space, range) = unsafe { ((*raw).colorspace as i32, (*raw).color_range as i32) };
        let key = (fmt, w, h, space, range);
        unsafe {
            if self.sws.as_ref().map(|s| s.1) != Some(key) {
                if let Some((old, _)) = self.sws.take() {
                    ffi::sws_freeContext(old);
                }
                // Frames whose size drifts from the stream header are scaled back to it, so
                // every delivered frame has the announced size.
                let ctx = ffi::sws_getContext(
                    w as i32,
                    h as i32,
                    std::mem::transmute::<i32, ffi::AVPixelFormat>(fmt),
                    cw as i32,
                    ch as i32,
                    ffi::AVPixelFormat::AV_PIX_FMT_RGB24,
                    // Plain flags (no accurate_rnd) give the same bytes as FFmpeg CLI and TorchCodec.
                    ffi::SWS_BILINEAR as i32,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null(),
                );
                if ctx.is_null() {
                    return Err(SmgError::UnsupportedFormat(format!("cannot convert pixel format {fmt} to RGB")));
                }
                let full_range = (range == ffi::AVColorRange::AVCOL_RANGE_JPEG as i32) as i32;
                let src_coeffs = ffi::sws_getCoefficients(if (0..=10).contains(&space) { space } else { 2 });
                let dst_coeffs = ffi::sws_getCoefficients(ffi::SWS_CS_DEFAULT as i32);
                ffi::sws_setColorspaceDetails(ctx, src_coeffs, full_range, dst_coeffs, 1, 0, 1 << 16, 1 << 16);
                self.sws = Some((ctx, key));
            }
            let ctx = self.sws.as_ref().unwrap().0;
            // swscale's SIMD writers may store whole blocks of pixels past the row end (and
            // past the last row): give every row a multiple of 64 pixels plus a spare row.
            let stride = (cw as usize).div_ceil(64) * 64 * 3;
            let mut buf = vec![0u8; stride * (ch as usize + 1)];
            let dst_planes = [buf.as_mut_ptr(), ptr::null_mut(), ptr::null_mut(), ptr::null_mut()];
            let dst_strides = [stride as i32, 0, 0, 0];
            let got = ffi::sws_scale(
                ctx,
                (*raw).data.as_ptr() as *const *const u8,
                (*raw).linesize.as_ptr(),
                0,
                h as i32,
                dst_planes.as_ptr(),
                dst_strides.as_ptr(),
            );
            if got <= 0 {
                return Err(SmgError::VideoDecode("pixel conversion failed".into()));
            }
            let mut packed = Vec::with_capacity(cw as usize * ch as usize * 3);
            for row in buf.chunks_exact(stride).take(ch as usize) {
                packed.extend_from_slice(&row[..cw as usize * 3]);
            }
            let (ow, oh, data) = rotate_rgb(packed, cw, ch, info.rotation_cw);
            Ok((ow, oh, data))
        }
    }
}

/// Turns a packed RGB24 image clockwise by `rotation_cw` degrees (0/90/180/270).
pub fn rotate_rgb(src: Vec<u8>, width: u32, height: u32, rotation_cw: u32) -> (u32, u32, Vec<u8>) {
    let (w, h) = (width as usize, height as usize);
    match rotation_cw {
        90 | 180 | 270 => {}
        _ => return (width, height, src),
    }
    let mut out = vec![0u8; src.len()];
    let px = |x: usize, y: usize| (y * w + x) * 3;
    match rotation_cw {
        180 => {
            for y in 0..h {
                for x in 0..w {
                    let (s, d) = (px(x, y), ((h - 1 - y) * w + (w - 1 - x)) * 3);
                    out[d..d + 3].copy_from_slice(&src[s..s + 3]);
                }
            }
            (width, height, out)
        }
        90 => {
            // output is h wide, w tall: out(x', y') = in(x = y', y = h-1-x')
            for y in 0..h {
                for x in 0..w {
                    let s = px(x, y);
                    let (ox, oy) = (h - 1 - y, x);
                    let d = (oy * h + ox) * 3;
                    out[d..d + 3].copy_from_slice(&src[s..s + 3]);
                }
            }
            (height, width, out)
        }
        _ => {
            for y in 0..h {
                for x in 0..w {
                    let s = px(x, y);
                    let (ox, oy) = (y, w - 1 - x);
                    let d = (oy * h + ox) * 3;
                    out[d..d + 3].copy_from_slice(&src[s..s + 3]);
                }
            }
            (height, width, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_matrix_angles() {
        let one = 1 << 16;
        // identity
        assert_eq!(rotation_from_matrix(&[one, 0, 0, 0, one, 0, 0, 0, 1 << 30]), 0);
        // av_display_rotation_set(90): [0, -1, 1, 0] -> counter-clockwise 90 -> turn 270 cw
        assert_eq!(rotation_from_matrix(&[0, -one, 0, one, 0, 0, 0, 0, 1 << 30]), 270);
        assert_eq!(rotation_from_matrix(&[0, one, 0, -one, 0, 0, 0, 0, 1 << 30]), 90);
        assert_eq!(rotation_from_matrix(&[-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30]), 180);
    }

    fn keys() -> KeyframeIndex {
        // 30 frames at pts 0, 10, 20, ...; keyframes at frames 0, 12, 24 (listed in decode order, repeated)
        let pts: Vec<i64> = (0..30).map(|i| i * 10).collect();
        KeyframeIndex::new(&pts, vec![240, 0, 120, 120]).unwrap()
    }

    #[test]
    fn keyframe_governing_each_frame() {
        let k = keys();
        assert_eq!(k.keys.iter().map(|k| k.index).collect::<Vec<_>>(), vec![0, 12, 24]);
        assert_eq!(k.governing(0), Some(Keyframe { index: 0, pts: 0 }));
        assert_eq!(k.governing(11).unwrap().index, 0); // just before a keyframe
        assert_eq!(k.governing(12), Some(Keyframe { index: 12, pts: 120 }));
        assert_eq!(k.governing(23).unwrap().index, 12);
        assert_eq!(k.governing(29).unwrap().index, 24);
        // a stream that starts before its first keyframe: nothing to seek to
        let late = KeyframeIndex::new(&[0, 10, 20, 30], vec![20]).unwrap();
        assert_eq!(late.governing(1), None);
        assert_eq!(late.governing(3).unwrap().index, 2);
    }

    #[test]
    fn keyframe_index_needs_distinct_timestamps_and_known_keys() {
        assert!(KeyframeIndex::new(&[0, 10, 10, 20], vec![0]).is_none());
        assert!(KeyframeIndex::new(&[0, 10, 20], vec![]).is_none());
        // a key timestamp no frame has is ignored rather than trusted
        let k = KeyframeIndex::new(&[0, 10, 20], vec![0, 15]).unwrap();
        assert_eq!(k.keys, vec![Keyframe { index: 0, pts: 0 }]);
    }

    #[test]
    fn seek_only_over_unsent_frames() {
        let k = keys();
        // at the start, a wanted frame in the first GOP is decoded in order
        assert_eq!(k.jump_target(5, 0), None);
        // a later GOP: jump to its keyframe, also for a frame exactly on it
        assert_eq!(k.jump_target(13, 0).unwrap().index, 12);
        assert_eq!(k.jump_target(12, 3).unwrap().index, 12);
        assert_eq!(k.jump_target(29, 13).unwrap().index, 24);
        // just before a keyframe: its GOP's keyframe, which was already sent
        assert_eq!(k.jump_target(23, 13), None);
        assert_eq!(k.jump_target(11, 5), None);
        // the keyframe is the next frame to send: nothing to skip
        assert_eq!(k.jump_target(20, 12), None);
        // the decoder already has the wanted frame's packet (B-frame order): never seek
        assert_eq!(k.jump_target(14, 16), None);
    }

    #[test]
    fn seek_landing_is_checked() {
        assert_eq!(landing(120, Some(90), false), Landing::Before);
        assert_eq!(landing(120, Some(120), true), Landing::OnKey);
        assert_eq!(landing(120, Some(120), false), Landing::Missed); // not decoded as a key picture
        assert_eq!(landing(120, Some(130), true), Landing::Missed); // landed after the keyframe
        assert_eq!(landing(120, None, true), Landing::Missed);
        let k = keys();
        let pts: Vec<i64> = (0..30).map(|i| i * 10).collect();
        let mut s = Seeker::new(&k, &pts);
        s.sent(Some(30));
        s.sent(Some(10)); // decode order is not presentation order
        assert_eq!(s.next_unsent, 4);
        let key = k.jump_target(20, s.next_unsent).unwrap();
        s.jumped(key);
        assert_eq!((s.next_unsent, s.unconfirmed), (12, Some(120)));
        assert_eq!(k.jump_target(20, s.next_unsent), None); // no second seek to the same keyframe
    }

    #[test]
    fn gop_runs_split_into_contiguous_groups() {
        let k = keys(); // keyframes at 0, 12, 24
        let wanted = |ix: &[usize]| ix.iter().enumerate().map(|(s, &i)| (i, vec![s])).collect::<BTreeMap<_, _>>();
        let firsts = |groups: &[BTreeMap<usize, Vec<usize>>]| {
            groups.iter().map(|g| g.keys().copied().collect::<Vec<_>>()).collect::<Vec<_>>()
        };
        // one GOP run: nothing to split
        assert!(split_by_gop(&k, &wanted(&[1, 5, 11]), 4).is_empty());
        assert!(split_by_gop(&k, &wanted(&[1, 13]), 1).is_empty());
        // never more groups than GOP runs; whole runs stay together
        let w = wanted(&[0, 3, 11, 12, 20, 29]);
        assert_eq!(firsts(&split_by_gop(&k, &w, 8)), vec![vec![0, 3, 11], vec![12, 20], vec![29]]);
        assert_eq!(firsts(&split_by_gop(&k, &w, 2)), vec![vec![0, 3, 11], vec![12, 20, 29]]);
        // a heavy first run takes one group, the rest share the other
        let w = wanted(&[0, 1, 2, 3, 4, 5, 6, 12, 24]);
        assert_eq!(firsts(&split_by_gop(&k, &w, 2)), vec![vec![0, 1, 2, 3, 4, 5, 6], vec![12, 24]]);
        let w = wanted(&[0, 12, 13, 14, 15, 16, 17, 24]);
        assert_eq!(firsts(&split_by_gop(&k, &w, 2)), vec![vec![0, 12, 13, 14, 15, 16, 17], vec![24]]);
        // many runs: roughly equal shares
        let pts: Vec<i64> = (0..120).map(|i| i * 10).collect();
        let k10 = KeyframeIndex::new(&pts, (0..12).map(|g| g * 100).collect()).unwrap();
        let every5: Vec<usize> = (0..120).step_by(5).collect();
        let sizes = |parts| split_by_gop(&k10, &wanted(&every5), parts).iter().map(|g| g.len()).collect::<Vec<_>>();
        assert_eq!(sizes(2), vec![12, 12]);
        assert_eq!(sizes(3), vec![8, 8, 8]);
        assert_eq!(sizes(5), vec![4, 6, 4, 6, 4]);
        // slots travel with their index
        let mut w = wanted(&[13, 2]);
        w.get_mut(&13).unwrap().push(7);
        assert_eq!(split_by_gop(&k, &w, 2)[1][&13], vec![0, 7]);
    }

    #[test]
    fn parallel_decoding_only_when_the_split_is_balanced_enough() {
        let k = keys(); // keyframes at 0, 12, 24
        let wanted = |ix: &[usize]| ix.iter().enumerate().map(|(s, &i)| (i, vec![s])).collect::<BTreeMap<_, _>>();
        // each GOP run costs from its keyframe to its last wanted frame; gaps between runs are free
        assert_eq!(decode_cost(&k, &wanted(&[3, 5])), 6);
        assert_eq!(decode_cost(&k, &wanted(&[3, 13, 29])), 4 + 2 + 6);
        assert_eq!(decode_cost(&k, &wanted(&[])), 0);
        let early = KeyframeIndex::new(&(0..30).map(|i| i * 10).collect::<Vec<_>>(), vec![50, 120]).unwrap();
        assert_eq!(decode_cost(&early, &wanted(&[2])), 3); // before the first keyframe: from the start
        // 2 threads: parallel while the slowest group is under total / 1.45
        assert!(parallel_pays_off(&[100, 100], 2));
        assert!(parallel_pays_off(&[130, 70], 2));
        assert!(!parallel_pays_off(&[241, 50], 2)); // a 250-frame GOP and a 50-frame one
        assert!(!parallel_pays_off(&[300], 2));
        assert!(!parallel_pays_off(&[10, 10], 1));
        // more threads make the single decoder faster, so the split must be more even
        assert!(parallel_pays_off(&[40, 30, 30], 3) && !parallel_pays_off(&[60, 20, 20], 3));
    }

    #[test]
    fn rotate_small_image() {
        // 2 wide, 1 tall: pixels A(1,1,1) B(2,2,2)
        let img = vec![1, 1, 1, 2, 2, 2];
        let (w, h, r) = rotate_rgb(img.clone(), 2, 1, 90);
        assert_eq!((w, h), (1, 2));
        assert_eq!(r, vec![1, 1, 1, 2, 2, 2]); // A on top after a clockwise turn
        let (_, _, r) = rotate_rgb(img.clone(), 2, 1, 270);
        assert_eq!(r, vec![2, 2, 2, 1, 1, 1]);
        let (_, _, r) = rotate_rgb(img, 2, 1, 180);
        assert_eq!(r, vec![2, 2, 2, 1, 1, 1]);
    }
}
