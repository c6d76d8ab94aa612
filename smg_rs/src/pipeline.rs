//! End-to-end calls: decode -> sample -> resize -> normalize -> patchify, with per-frame work
//! on a bounded rayon pool while the (sequential) decoder keeps going.
use crate::avio::Source;
use crate::decode::{DecodeOptions, DecoderKind, RgbFrame, VideoDecoder};
use crate::error::{invalid, limit, Result, SmgError};
use crate::limits::Limits;
use crate::normalize::Normalizer;
use crate::patchify::{patchify_group, FrameLayout, OutElem};
use crate::presets::{Filter, Preset, SizeOverrides, Stage};
use crate::resize::{resample_rgb_rows, resize_bicubic, AxisWeights, FloatFrame, ResampleScratch};
use crate::bufcache::Cacheable;
use crate::pool::{pool, prefault};
use std::sync::{mpsc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct VideoRequest {
    pub fps: Option<f64>,
    pub max_frames: Option<usize>,
    pub size: SizeOverrides,
    /// Total thread budget (decoder threads and resize workers); None = min(cores, 8).
    pub threads: Option<usize>,
    pub limits: Limits,
    /// Software (default) or NVDEC decoding (`decode::DecoderKind`).
    pub decoder: DecoderKind,
}

#[derive(Debug, Clone)]
pub struct Features<T> {
    /// Row-major `(rows, cols)`.
    pub pixel_values: Vec<T>,
    pub rows: usize,
    pub cols: usize,
    pub grid_thw: (usize, usize, usize),
    pub frame_indices: Vec<usize>,
    pub timestamps: Vec<f64>,
    pub source_fps: f64,
    pub duration: f64,
    pub num_source_frames: usize,
}

pub struct DecodedVideo {
    /// `(n, height, width, 3)` uint8, row-major.
    pub frames: Vec<u8>,
    pub count: usize,
    pub height: u32,
    pub width: u32,
    pub frame_indices: Vec<usize>,
    pub timestamps: Vec<f64>,
    pub source_fps: f64,
    pub duration: f64,
    pub num_source_frames: usize,
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8)
}

fn resolve_threads(threads: Option<usize>) -> Result<usize> {
    match threads {
        Some(0) => invalid("threads must be >= 1"),
        Some(t) if t > 256 => invalid("threads must be <= 256"),
        Some(t) => Ok(t),
        None => Ok(default_threads()),
    }
}

fn resize_through(frame: &RgbFrame, plan: &[Stage]) -> Result<FloatFrame> {
    let (mut h, mut w) = (frame.height, frame.width);
    let mut data = std::borrow::Cow::Borrowed(frame.data.as_slice());
    for s in plan {
        if (s.height, s.width) != (h, w) {
            let out = match s.filter {
                Filter::Bicubic => crate::resize::resize_bicubic_u8(&data, h, w, s.height, s.width)?,
                Filter::Bilinear => crate::resize::resize_bilinear_u8(&data, h, w, s.height, s.width)?,
            };
            data = std::borrow::Cow::Owned(out);
            (h, w) = (s.height, s.width);
        }
    }
    Ok(FloatFrame::from_rgb8(h, w, &data))
}

thread_local! {
    static SCRATCH: std::cell::RefCell<ResampleScratch> = std::cell::RefCell::new(ResampleScratch::default());
}

/// Runs `frame` through `plan` and hands each output row (`width * 3` floats, 0..255 scale) to
/// `emit`. Float plans (every float stage is bicubic: SGLang MiniMax-M3 and its HF processor)
/// stream the last stage straight from the source or the previous stage, row by row; uint8
/// plans resize whole frames as the reference's uint8 tensors are.
fn frame_rows(frame: &RgbFrame, plan: &[Stage], uint8: bool, emit: &mut dyn FnMut(usize, &mut [f32])) -> Result<()> {
    let expect = frame.height as usize * frame.width as usize * 3;
    if frame.data.len() != expect {
        return Err(SmgError::VideoDecode("frame buffer does not match its size".into()));
    }
    if uint8 {
        let f = resize_through(frame, plan)?;
        let w3 = f.width as usize * 3;
        let mut f = f;
        for (y, row) in f.data.chunks_exact_mut(w3.max(1)).enumerate() {
            emit(y, row);
        }
        return Ok(());
    }
    let (last, first) = plan.split_last().expect("a resize plan has at least one stage");
    let mut f: Option<FloatFrame> = None;
    for s in first {
        debug_assert_eq!(s.filter, Filter::Bicubic);
        f = Some(match f {
            None => crate::resize::resize_bicubic_rgb8(&frame.data, frame.height, frame.width, s.height, s.width)?,
            Some(prev) => resize_bicubic(prev, s.height, s.width)?,
        });
    }
    debug_assert_eq!(last.filter, Filter::Bicubic);
    let (h, w) = f.as_ref().map_or((frame.height, frame.width), |f| (f.height, f.width));
    if last.height == 0 || last.width == 0 {
        return invalid("resize target must be non-empty");
    }
    let v = AxisWeights::bicubic_aa(h as usize, last.height as usize);
    let hw = AxisWeights::bicubic_aa(w as usize, last.width as usize);
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        match &f {
            None => resample_rgb_rows(&frame.data, &v, &hw, &mut scratch, emit),
            Some(f) => resample_rgb_rows(&f.data, &v, &hw, &mut scratch, emit),
        }
    });
    Ok(())
}

/// The output buffer, shared by the frame jobs: each writes only its own temporal slots.
#[derive(Clone, Copy)]
struct OutPtr<T>(*mut T);
// SAFETY: jobs write disjoint elements (one frame = one temporal slot of one group), and the
// buffer outlives the scope the jobs run in.
unsafe impl<T: Send> Send for OutPtr<T> {}
unsafe impl<T: Send> Sync for OutPtr<T> {}

/// Work for one sampled frame: resize, normalize and write it into its temporal slot of its
/// group (the last frame also into the slots that pad its group).
struct FrameJob<'a, T> {
    plan: &'a [Stage],
    uint8: bool,
    norm: &'a Normalizer,
    layout: &'a FrameLayout,
    out: OutPtr<T>,
    groups: usize,
    frames: usize,
    failure: &'a Mutex<Option<SmgError>>,
}

impl<T: OutElem> FrameJob<'_, T> {
    fn run(&self, frame: RgbFrame, slot: usize) {
        let tp = self.layout.geom.temporal_patch;
        let (g, ti) = (slot / tp, slot % tp);
        assert!(g < self.groups && slot < self.frames);
        let slots = if slot + 1 == self.frames { ti..tp } else { ti..ti + 1 };
        // SAFETY: group `g` lies inside the buffer (g < groups); this job is the only writer of
        // these slots (one job per sampled frame), and write_row stays inside the group.
        let group = unsafe { self.out.0.add(g * self.layout.group_len()) };
        let (oh, ow) = (self.layout.height, self.layout.width);
        let p = self.layout.geom.patch;
        let w3 = ow * 3;
        // rows are normalized as they come into a band of one patch row, one plane per
        // channel, which goes out patch by patch (sequential writes into the output)
        let mut band = vec![0f32; 3 * p * ow];
        let done = frame_rows(&frame, self.plan, self.uint8, &mut |y, row| {
            assert!(y < oh && row.len() == w3, "resized frame does not match the plan");
            let (r, rest) = band[(y % p) * ow..].split_at_mut(p * ow);
            let (g, b) = rest.split_at_mut(p * ow);
            self.norm.apply_rgb_row_planar(row, [&mut r[..ow], &mut g[..ow], &mut b[..ow]]);
            if y % p == p - 1 {
                unsafe { self.layout.write_band(group, slots.clone(), y / p, &band) };
            }
        });
        if let Err(e) = done {
            self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
        }
    }
}

/// Decodes, samples and turns a video into patch features for `preset`.
pub fn preprocess_video<T: OutElem + Cacheable>(source: Source<'_>, preset: &Preset, req: &VideoRequest) -> Result<Features<T>> {
    if let Some(0) = req.max_frames {
        return invalid("max_frames must be >= 1");
    }
    let threads = resolve_threads(req.threads)?;
    let mut limits = req.limits.clone();
    limits.min_side = limits.min_side.max(preset.geometry.patch as u32);
    limits.max_aspect_ratio = limits.max_aspect_ratio.min(preset.max_aspect_ratio);
    let mut decoder =
        VideoDecoder::open(source, DecodeOptions { threads, limits: limits.clone(), images: false, decoder: req.decoder })?;
    let info = decoder.info().clone();
    let indices = preset.sample(info.num_frames, info.avg_fps, req.fps, req.max_frames)?;
    let plan = preset.resize_plan(info.height, info.width, req.size, indices.len())?;
    let (out_h, out_w) = plan.last().map(|s| (s.height, s.width)).unwrap();
    let geom = preset.geometry;
    let (gh, gw) = geom.grid_hw(out_h as usize, out_w as usize);
    let gt = geom.grid_t(indices.len());
    let rows = gt * gh * gw;
    let cols = geom.row_len();
    let bytes = rows as u64 * cols as u64 * std::mem::size_of::<T>() as u64;
    if bytes > limits.max_output_bytes {
        return limit(format!("features would take {bytes} bytes, above max_output_bytes={}", limits.max_output_bytes));
    }
    let norm = Normalizer::new(preset.mean, preset.std, preset.rescale_factor);
    let layout = FrameLayout::new(geom, out_h as usize, out_w as usize);
    debug_assert_eq!(layout.group_len(), gh * gw * cols);
    // a cached buffer of an earlier call's output (old data; mapped already), else a fresh one:
    // every element is written below (each sampled frame fills its slots of its group)
    let (mut pixel_values, reused) = crate::bufcache::global().take::<T>(rows * cols);
    let mut timestamps = vec![0.0; indices.len()];
    let mut delivered = vec![false; indices.len()];
    let failure: Mutex<Option<SmgError>> = Mutex::new(None);
    let workers = pool(threads)?;
    // Bounded number of frames in flight, so decoded frames cannot pile up in memory.
    let in_flight = threads * 2 + 2;
    let (token_tx, token_rx) = mpsc::sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        token_tx.send(()).expect("fresh channel has room");
    }
    let job = FrameJob {
        plan: &plan,
        uint8: preset.uint8_resize,
        norm: &norm,
        layout: &layout,
        out: OutPtr(pixel_values.as_mut_ptr()),
        groups: gt,
        frames: indices.len(),
        failure: &failure,
    };
    let job = &job;
    let decode_result = workers.in_place_scope(|scope| -> Result<()> {
        // fault the output in while the decoder gets to the first frame (jobs that get there
        // first fault their pages themselves)
        if bytes >= 1 << 20 && !reused {
            let out = (job.out.0 as usize, bytes as usize);
            scope.spawn(move |_| prefault(out.0 as *mut u8, out.1));
        }
        decoder.decode_selected(&indices, |slot, frame| {
            timestamps[slot] = frame.pts_seconds;
            delivered[slot] = true;
            let _ = token_rx.recv();
            let tx = token_tx.clone();
            scope.spawn(move |_| {
                job.run(frame, slot);
                let _ = tx.send(());
            });
            Ok(())
        })
    });
    decode_result?;
    if let Some(slot) = delivered.iter().position(|&d| !d) {
        // decode_selected delivers every slot or fails; a reused buffer must not keep old data
        return Err(SmgError::VideoDecode(format!("sampled frame {slot} was not delivered")));
    }
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(Features {
        pixel_values,
        rows,
        cols,
        grid_thw: (gt, gh, gw),
        frame_indices: indices,
        timestamps,
        source_fps: info.avg_fps,
        duration: info.duration,
        num_source_frames: info.num_frames,
    })
}

/// Which frames `decode_frames` returns.
#[derive(Debug, Clone, Default)]
pub struct FrameSelection {
    pub fps: Option<f64>,
    pub max_frames: Option<usize>,
    pub frame_indices: Option<Vec<usize>>,
}

/// Decodes the selected frames to uint8 RGB at display size. Default selection: every frame
/// (thinned evenly to `max_frames`); with `fps`, the MiniMax-M3 constant-rate sampling.
pub fn decode_frames(
    source: Source<'_>,
    sel: &FrameSelection,
    threads: Option<usize>,
    limits: &Limits,
    kind: DecoderKind,
) -> Result<DecodedVideo> {
    if let Some(0) = sel.max_frames {
        return invalid("max_frames must be >= 1");
    }
    let threads = resolve_threads(threads)?;
    let mut decoder =
        VideoDecoder::open(source, DecodeOptions { threads, limits: limits.clone(), images: false, decoder: kind })?;
    let info = decoder.info().clone();
    let indices = match (&sel.frame_indices, sel.fps) {
        (Some(_), Some(_)) => return invalid("pass either frame_indices or fps, not both"),
        (Some(ix), None) => ix.clone(),
        (None, Some(fps)) => {
            if !(fps > 0.0) || !fps.is_finite() {
                return invalid(format!("fps must be a positive finite number, got {fps}"));
            }
            crate::sample::constant_rate_indices(info.num_frames, info.avg_fps, fps, sel.max_frames)
        }
        (None, None) => match sel.max_frames {
            Some(cap) if cap < info.num_frames => crate::sample::linspace_round(info.num_frames, cap),
            _ => (0..info.num_frames).collect(),
        },
    };
    let frame_bytes = info.height as usize * info.width as usize * 3;
    let total = frame_bytes as u64 * indices.len() as u64;
    if total > limits.max_output_bytes {
        return limit(format!("decoded frames would take {total} bytes, above max_output_bytes={}", limits.max_output_bytes));
    }
    let mut frames = vec![0u8; total as usize];
    let mut timestamps = vec![0.0; indices.len()];
    decoder.decode_selected(&indices, |slot, f| {
        if f.data.len() != frame_bytes {
            return Err(SmgError::VideoDecode("frame size changed mid-stream".into()));
        }
        frames[slot * frame_bytes..(slot + 1) * frame_bytes].copy_from_slice(&f.data);
        timestamps[slot] = f.pts_seconds;
        Ok(())
    })?;
    Ok(DecodedVideo {
        frames,
        count: indices.len(),
        height: info.height,
        width: info.width,
        frame_indices: indices,
        timestamps,
        source_fps: info.avg_fps,
        duration: info.duration,
        num_source_frames: info.num_frames,
    })
}

/// One RGB image (`height x width x 3` uint8) -> features, as the HF image processor of the
/// preset makes them: uint8 resize, then a single frame repeated to one temporal group.
pub fn preprocess_image<T: OutElem>(rgb: &[u8], height: u32, width: u32, preset: &Preset, max_pixels: Option<u64>, limits: &Limits) -> Result<Features<T>> {
    let mut limits = limits.clone();
    limits.min_side = limits.min_side.max(preset.geometry.patch as u32);
    limits.check_frame_size(width, height)?;
    if rgb.len() != height as usize * width as usize * 3 {
        return invalid("image buffer does not match its shape");
    }
    let (out_h, out_w) = preset.image_size(height, width, max_pixels)?;
    let resized = crate::resize::resize_bicubic_u8(rgb, height, width, out_h, out_w)?;
    let resized = FloatFrame::from_rgb8(out_h, out_w, &resized);
    let geom = preset.geometry;
    let (gh, gw) = geom.grid_hw(out_h as usize, out_w as usize);
    let cols = geom.row_len();
    let mut pixel_values = vec![T::default(); gh * gw * cols];
    let refs: Vec<&[f32]> = vec![resized.data.as_slice(); geom.temporal_patch];
    let norm = Normalizer::new(preset.mean, preset.std, preset.rescale_factor);
    patchify_group(&refs, out_h as usize, out_w as usize, &geom, &norm, &mut pixel_values);
    Ok(Features {
        pixel_values,
        rows: gh * gw,
        cols,
        grid_thw: (1, gh, gw),
        frame_indices: vec![0],
        timestamps: vec![0.0],
        source_fps: 0.0,
        duration: 0.0,
        num_source_frames: 1,
    })
}

/// Encoded image bytes (PNG, JPEG, WebP, BMP) -> features, through FFmpeg's image decoders.
pub fn preprocess_image_bytes<T: OutElem>(data: &[u8], preset: &Preset, max_pixels: Option<u64>, limits: &Limits) -> Result<Features<T>> {
    let mut decoder = VideoDecoder::open(Source::Bytes(data), DecodeOptions { threads: 1, limits: limits.clone(), images: true, decoder: DecoderKind::Software })?;
    let mut frame: Option<RgbFrame> = None;
    decoder.decode_selected(&[0], |_, f| {
        frame = Some(f);
        Ok(())
    })?;
    let f = frame.ok_or_else(|| SmgError::VideoDecode("image could not be decoded".into()))?;
    preprocess_image(&f.data, f.height, f.width, preset, max_pixels, limits)
}
