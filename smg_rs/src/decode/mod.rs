//! Video decoding with the system FFmpeg: stream selection (`stream`), a demux-only scan
//! (`scan`: frame count, timestamps, average rate, as TorchCodec's exact mode measures them),
//! then a decode that converts (`convert`: RGB24, turned for display by `orient`) only the
//! requested frames (`deliver`), jumps over whole GOPs nobody asked for (`seek`: keyframe
//! seeks), decodes disjoint runs of GOPs on several threads at once (`parallel`), and lets
//! H.264/HEVC decoders skip non-reference pictures that are not requested (`pass`).
//!
//! Dependencies run one way: this module uses `avio` (opening inputs), never the reverse.
use crate::avio::{self, Source};
use crate::error::{limit, Result};
use crate::limits::Limits;
use ffmpeg_next as ff;
use ff::ffi;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod convert;
mod deliver;
mod orient;
mod parallel;
mod pass;
mod scan;
mod seek;
mod stream;

pub use orient::Orientation;
pub use stream::{ALLOWED_CODECS, IMAGE_CODECS};

use deliver::DeliverState;
use parallel::MAX_GOP_WORKERS;
use pass::{NonRefSkipper, Pass, PassRun};
use seek::{decode_cost, parallel_pays_off, sequential_decode_forced, split_by_gop, KeyframeIndex, Seeker};

/// Which decoders run: FFmpeg's software decoders (the default), or NVIDIA's NVDEC through
/// FFmpeg's cuvid decoders (opt-in). NVDEC decodes one stream in order on the GPU's video engine
/// (no frame threads, no GOP-parallel workers, no skipping of non-reference pictures) and hands
/// back NV12 frames in host memory, which take the same RGB conversion as software frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecoderKind {
    #[default]
    Software,
    Nvdec,
}

impl DecoderKind {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "software" => Ok(Self::Software),
            "nvdec" => Ok(Self::Nvdec),
            other => crate::error::invalid(format!("decoder must be 'software' or 'nvdec', got {other:?}")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Decoding threads (0 or 1 = single-threaded): FFmpeg frame/slice threads of one decoder,
    /// or, when the wanted frames lie under several keyframes and seeking is possible, that
    /// many single-threaded decoders on disjoint runs of GOPs.
    pub threads: usize,
    pub limits: Limits,
    /// Accept still-image formats (PNG, JPEG, WebP, BMP) instead of video containers.
    pub images: bool,
    pub decoder: DecoderKind,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self { threads: 1, limits: Limits::default(), images: false, decoder: DecoderKind::Software }
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
    /// Display size (after the orientation).
    pub width: u32,
    pub height: u32,
    /// Clockwise rotation in the display matrix (0, 90, 180, 270), as FFmpeg reports it.
    pub rotation_cw: u32,
    /// What is applied to decoded frames for display (FFmpeg CLI autorotate: turns and mirrors).
    pub orientation: Orientation,
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

fn check_deadline(deadline: Instant) -> Result<()> {
    if Instant::now() > deadline {
        return limit("decoding exceeded timeout_s");
    }
    Ok(())
}

impl<'a> VideoDecoder<'a> {
    /// Opens the source, picks its video stream and scans its packets. No frame is decoded here.
    pub fn open(source: Source<'a>, opts: DecodeOptions) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs_f64(opts.limits.timeout_s.max(0.0));
        let limits = &opts.limits;
        let mut input = avio::open(&source, limits, deadline, opts.formats())?;
        let container = input.input().format().name().to_string();
        let header = stream::select(input.input(), opts.codecs())?;
        limits.check_frame_size(header.width, header.height)?;
        if header.header_duration > limits.max_duration_s {
            return limit(format!(
                "video lasts {:.1} s, above max_duration_s={}",
                header.header_duration, limits.max_duration_s
            ));
        }
        if header.header_frames > limits.max_source_frames {
            return limit(format!(
                "video has {} frames, above max_source_frames={}",
                header.header_frames, limits.max_source_frames
            ));
        }
        let scan = scan::scan(input.input(), &header, &container, limits, deadline)?;
        drop(input);
        let (width, height) = header.orientation.display_size(header.width, header.height);
        let info = VideoInfo {
            width,
            height,
            rotation_cw: header.orientation.rotation_cw(),
            orientation: header.orientation,
            num_frames: scan.num_frames,
            avg_fps: scan.avg_fps,
            duration: scan.duration,
            frame_times: scan.frame_times,
            codec: header.codec,
            container,
        };
        let keyframes = scan.frame_pts.as_deref().and_then(|p| KeyframeIndex::new(p, scan.key_pts));
        Ok(Self {
            source,
            codec_id: header.codec_id,
            opts,
            deadline,
            stream_index: header.index,
            info,
            frame_pts: scan.frame_pts,
            keyframes,
            stats: DecodeStats::default(),
        })
    }

    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    pub fn last_decode_stats(&self) -> DecodeStats {
        self.stats
    }

    /// Decodes the stream in order and hands `sink(slot, frame)` the frame for every
    /// `indices[slot]` (indices may repeat or be unordered), in increasing index order. A wanted
    /// frame that the decoder flags as damaged, loses (reporting an error) or predicts from a
    /// damaged frame of its GOP fails the call with `VideoDecode` (smg_rs/README.md, "Damaged
    /// streams"); one it leaves out without an error is served by the next decoded frame, or
    /// the last one. Runs of whole GOPs before the next wanted frame are skipped by
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
        let hardware = self.opts.decoder != DecoderKind::Software;
        let groups = match &self.keyframes {
            Some(keys) if seeking && !hardware => {
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
        DeliverState::new(wanted, self.frame_pts.as_deref(), &self.info, decode_errors)
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
        let skipper = match self.opts.decoder {
            DecoderKind::Software => NonRefSkipper::new(self.codec_id, self.frame_pts.as_deref(), None),
            DecoderKind::Nvdec => None, // cuvid parses every picture itself
        };
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
        state.finish(sink)
    }
}
