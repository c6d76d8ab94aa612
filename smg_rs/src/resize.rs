//! Output sizes (the reference processors' integer/float arithmetic, reproduced exactly) and
//! antialiased bicubic resampling of float frames.
use crate::error::{invalid, Result};
use crate::hpass::{horizontal_scalar, madd, Pairs};
#[cfg(target_arch = "x86_64")]
use crate::hpass::horizontal_avx2;
use fast_image_resize as fr;

/// Python's `round()` (half to even) for the non-negative values used here.
fn py_round(x: f64) -> f64 {
    x.round_ties_even()
}

fn round_up(x: u64, multiple: u64) -> u64 {
    x.div_ceil(multiple) * multiple
}

/// SGLang MiniMax-M3 first stage: scale so the long side is at most `max_side` (never up),
/// then round each side *up* to a multiple of `multiple`. Returns `(height, width)`.
pub fn multiple_of_with_max_side(height: u32, width: u32, multiple: u32, max_side: u32) -> (u32, u32) {
    let (h, w) = (height as f64, width as f64);
    let long = h.max(w);
    let ratio = if long > max_side as f64 { max_side as f64 / long } else { 1.0 };
    let nh = round_up(py_round(h * ratio) as u64, multiple as u64);
    let nw = round_up(py_round(w * ratio) as u64, multiple as u64);
    (nh as u32, nw as u32)
}

/// Qwen2-VL-family `smart_resize`: nearest multiple of `factor`, then rescaled (keeping the
/// aspect) into `[min_pixels, max_pixels]`. Returns `(height, width)`.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
    max_ratio: f64,
) -> Result<(u32, u32)> {
    smart_resize_float(height, width, factor, min_pixels as f64, max_pixels as f64, max_ratio, true)
}

/// Same as [`smart_resize`] but without the `max(factor, ...)` guard in the shrink branch,
/// as in the MiniMax-M3 HF processors (their shrink branch floors without it); a shrink to an
/// empty grid is then an error instead.
pub fn smart_resize_minimax(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
    max_ratio: f64,
) -> Result<(u32, u32)> {
    smart_resize_float(height, width, factor, min_pixels as f64, max_pixels as f64, max_ratio, false)
}

/// `smart_resize` with float pixel budgets; `guard_shrink` adds the `max(factor, ..)` of the
/// HF Qwen2-VL version to the shrink branch (SGLang's Qwen version has none).
pub fn smart_resize_float(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: f64,
    max_pixels: f64,
    max_ratio: f64,
    guard_shrink: bool,
) -> Result<(u32, u32)> {
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if height == 0 || width == 0 {
        return invalid(format!("cannot resize an empty frame ({height}x{width})"));
    }
    if h.max(w) / h.min(w) > max_ratio {
        return crate::error::limit(format!("absolute aspect ratio must be at most {max_ratio}, got {}", h.max(w) / h.min(w)));
    }
    let mut hb = f.max(py_round(h / f) * f);
    let mut wb = f.max(py_round(w / f) * f);
    if hb * wb > max_pixels {
        let beta = ((h * w) / max_pixels).sqrt();
        hb = (h / beta / f).floor() * f;
        wb = (w / beta / f).floor() * f;
        if guard_shrink {
            hb = hb.max(f);
            wb = wb.max(f);
        }
    } else if hb * wb < min_pixels {
        let beta = (min_pixels / (h * w)).sqrt();
        hb = (h * beta / f).ceil() * f;
        wb = (w * beta / f).ceil() * f;
    }
    if hb < f || wb < f {
        return crate::error::limit(format!("frame {width}x{height} resizes to an empty grid"));
    }
    Ok((hb as u32, wb as u32))
}

/// The HF Qwen3-VL video processor's `smart_resize`: sides rounded to multiples of `factor`,
/// but the pixel budget covers the whole clip (`frames` rounded up to `temporal_factor`, times
/// the frame area), so longer clips get smaller frames. Sides below `factor` are an error there
/// (no upscaling of slivers). Returns `(height, width)`.
#[allow(clippy::too_many_arguments)]
pub fn smart_resize_temporal(
    frames: usize,
    height: u32,
    width: u32,
    temporal_factor: usize,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
    max_ratio: f64,
) -> Result<(u32, u32)> {
    if frames == 0 || temporal_factor == 0 {
        return invalid("smart_resize needs at least one frame");
    }
    if height < factor || width < factor {
        return crate::error::limit(format!("frame {width}x{height} is smaller than the {factor}-pixel resize factor"));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > max_ratio {
        return crate::error::limit(format!("absolute aspect ratio must be at most {max_ratio}, got {}", h.max(w) / h.min(w)));
    }
    let mut hb = py_round(h / f) * f;
    let mut wb = py_round(w / f) * f;
    let t_bar = frames.div_ceil(temporal_factor) * temporal_factor;
    // every product and budget here is an integer below 2^53: exact in f64, as in Python
    let clip = frames as f64 * h * w;
    let rounded = t_bar as f64 * hb * wb;
    if rounded > max_pixels as f64 {
        let beta = (clip / max_pixels as f64).sqrt();
        hb = f.max((h / beta / f).floor() * f);
        wb = f.max((w / beta / f).floor() * f);
    } else if rounded < min_pixels as f64 {
        let beta = (min_pixels as f64 / clip).sqrt();
        hb = (h * beta / f).ceil() * f;
        wb = (w * beta / f).ceil() * f;
    }
    Ok((hb as u32, wb as u32))
}

/// A float RGB frame, interleaved HWC, values on the 0..255 scale (not clamped).
#[derive(Debug, Clone, PartialEq)]
pub struct FloatFrame {
    pub height: u32,
    pub width: u32,
    pub data: Vec<f32>,
}

impl FloatFrame {
    pub fn from_rgb8(height: u32, width: u32, rgb: &[u8]) -> Self {
        debug_assert_eq!(rgb.len(), height as usize * width as usize * 3);
        Self { height, width, data: rgb.iter().map(|&v| v as f32).collect() }
    }
}

/// Antialiased bicubic (a = -0.5, the PIL/torch `antialias=True` kernel) resize of a float
/// frame. Equal sizes return the input untouched: the reference's resize is the identity there.
pub fn resize_bicubic(src: FloatFrame, height: u32, width: u32) -> Result<FloatFrame> {
    if src.height == height && src.width == width {
        return Ok(src);
    }
    resize_rgb_to_float(&src.data, src.height, src.width, height, width)
}

/// [`resize_bicubic`] of a packed RGB24 frame, read as floats (no uint8 rounding anywhere).
pub fn resize_bicubic_rgb8(rgb: &[u8], height: u32, width: u32, out_h: u32, out_w: u32) -> Result<FloatFrame> {
    resize_rgb_to_float(rgb, height, width, out_h, out_w)
}

fn resize_rgb_to_float<C: Component>(src: &[C], height: u32, width: u32, out_h: u32, out_w: u32) -> Result<FloatFrame> {
    if out_h == 0 || out_w == 0 {
        return invalid("resize target must be non-empty");
    }
    if height == 0 || width == 0 || src.len() != height as usize * width as usize * 3 {
        return invalid("resize source does not match its size");
    }
    let v = AxisWeights::bicubic_aa(height as usize, out_h as usize);
    let h = AxisWeights::bicubic_aa(width as usize, out_w as usize);
    let row = out_w as usize * 3;
    let mut out = vec![0f32; out_h as usize * row];
    resample_rgb_rows(src, &v, &h, &mut ResampleScratch::default(), &mut |y, r| {
        out[y * row..(y + 1) * row].copy_from_slice(r)
    });
    Ok(FloatFrame { height: out_h, width: out_w, data: out })
}

/// Per-output-position taps of one axis of a separable resize: output `i` reads inputs
/// `start[i] .. start[i] + len[i]` with weights `weights[i * stride ..][.. len[i]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisWeights {
    pub input: usize,
    pub output: usize,
    pub start: Vec<usize>,
    pub len: Vec<usize>,
    pub stride: usize,
    pub weights: Vec<f32>,
}

impl AxisWeights {
    /// The antialiased bicubic (a = -0.5) taps of torch's `_upsample_bicubic2d_aa` (and PIL):
    /// the support widens with the downscale factor, windows are clipped at the borders and
    /// each window's weights are normalized to sum to one. Equal sizes give the identity.
    pub fn bicubic_aa(input: usize, output: usize) -> Self {
        assert!(input > 0 && output > 0, "resize sizes must be non-empty");
        if input == output {
            return Self { input, output, start: (0..output).collect(), len: vec![1; output], stride: 1, weights: vec![1.0; output] };
        }
        fn cubic(x: f64) -> f64 {
            const A: f64 = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * A
            } else {
                0.0
            }
        }
        let scale = input as f64 / output as f64;
        let (support, invscale) = if scale >= 1.0 { (2.0 * scale, 1.0 / scale) } else { (2.0, 1.0) };
        let stride = (support.ceil() as usize) * 2 + 1;
        let mut start = Vec::with_capacity(output);
        let mut len = Vec::with_capacity(output);
        let mut weights = vec![0f32; output * stride];
        let mut tmp = vec![0f64; stride];
        for i in 0..output {
            let center = scale * (i as f64 + 0.5);
            // torch truncates toward zero (`int64_t(center - support + 0.5)`), then clamps
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let n = hi.saturating_sub(lo).min(stride);
            let mut total = 0.0;
            for (j, t) in tmp[..n].iter_mut().enumerate() {
                *t = cubic((j as f64 + lo as f64 - center + 0.5) * invscale);
                total += *t;
            }
            let row = &mut weights[i * stride..i * stride + n];
            for (w, t) in row.iter_mut().zip(&tmp[..n]) {
                *w = if total != 0.0 { (*t / total) as f32 } else { *t as f32 };
            }
            start.push(lo);
            len.push(n);
        }
        Self { input, output, start, len, stride, weights }
    }

    #[inline(always)]
    pub(crate) fn taps(&self, i: usize) -> (usize, &[f32]) {
        let s = i * self.stride;
        (self.start[i], &self.weights[s..s + self.len[i]])
    }
}

/// A source pixel component that the resampler reads (uint8 frames, or float frames between
/// stages).
pub trait Component: Copy + Send + Sync {
    fn to_f32(self) -> f32;
}
impl Component for u8 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
}
impl Component for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// Reusable buffers of [`resample_rgb_rows`] (one per worker thread).
#[derive(Default)]
pub struct ResampleScratch {
    column: Vec<f32>,
    row: Vec<f32>,
    pairs: Pairs,
}

/// Separable antialiased bicubic resize of an interleaved RGB frame (`src`: `v.input` rows of
/// `h.input * 3` components), in float32 without rounding or clamping (torch's float path),
/// streamed row by row: `emit(y, row)` gets each output row, `h.output * 3` floats (a scratch
/// buffer it may overwrite). The
/// vertical pass runs first, over whole source rows (contiguous, vectorized), so only the
/// output rows' worth of horizontal work is done and nothing frame-sized is allocated.
pub fn resample_rgb_rows<C: Component>(
    src: &[C],
    v: &AxisWeights,
    h: &AxisWeights,
    scratch: &mut ResampleScratch,
    emit: &mut dyn FnMut(usize, &mut [f32]),
) {
    let in_w = h.input * 3;
    assert_eq!(src.len(), v.input * in_w, "source does not match the resize weights");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { resample_avx2(src, v, h, scratch, emit) };
            return;
        }
    }
    resample_generic::<C, false>(src, v, h, scratch, emit)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn resample_avx2<C: Component>(src: &[C], v: &AxisWeights, h: &AxisWeights, scratch: &mut ResampleScratch, emit: &mut dyn FnMut(usize, &mut [f32])) {
    resample_generic::<C, true>(src, v, h, scratch, emit)
}

#[inline(always)]
fn resample_generic<C: Component, const FMA: bool>(src: &[C], v: &AxisWeights, h: &AxisWeights, scratch: &mut ResampleScratch, emit: &mut dyn FnMut(usize, &mut [f32])) {
    let in_w = h.input * 3;
    let out_w = h.output * 3;
    let h_identity = h.input == h.output;
    // AVX2 horizontal pass (same bits as the scalar one with FMA: crate::hpass)
    #[cfg(target_arch = "x86_64")]
    let simd = FMA && !h_identity && std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    if simd {
        scratch.pairs.build(h);
    }
    // zeros after the column: the horizontal passes load four components (RGB + the next R)
    // at once, and the AVX2 one runs every pixel to the axis' largest tap count
    scratch.column.clear();
    scratch.column.resize(in_w + Pairs::column_padding(h), 0.0);
    scratch.row.clear();
    scratch.row.resize(out_w + 1, 0.0);
    for y in 0..v.output {
        let (y0, wv) = v.taps(y);
        // vertical: column[x] = sum_k wv[k] * src[y0 + k][x]
        {
            let col = &mut scratch.column[..in_w];
            let first = &src[y0 * in_w..(y0 + 1) * in_w];
            let w0 = wv[0];
            for (c, s) in col.iter_mut().zip(first) {
                *c = w0 * s.to_f32();
            }
            for (k, &wk) in wv.iter().enumerate().skip(1) {
                let r = &src[(y0 + k) * in_w..(y0 + k + 1) * in_w];
                for (c, s) in col.iter_mut().zip(r) {
                    *c = madd::<FMA>(wk, s.to_f32(), *c);
                }
            }
        }
        if h_identity {
            emit(y, &mut scratch.column[..in_w]);
            continue;
        }
        // horizontal: row[x] = sum_k wh[k] * column[x0 + k], RGB at once
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd` implies AVX2 and FMA (checked above); pairs were built from `h`.
            unsafe { horizontal_avx2(&scratch.column, h, &scratch.pairs, &mut scratch.row) };
            emit(y, &mut scratch.row[..out_w]);
            continue;
        }
        horizontal_scalar::<FMA>(&scratch.column, h, &mut scratch.row, 0);
        emit(y, &mut scratch.row[..out_w]);
    }
}

/// Antialiased bicubic resize of a packed RGB24 image with uint8 output. The HF image
/// processors resize uint8 tensors, which torch does as two separable passes (horizontal,
/// then vertical), each rounded and clamped to uint8; the same order is kept here.
pub fn resize_bicubic_u8(rgb: &[u8], height: u32, width: u32, out_h: u32, out_w: u32) -> Result<Vec<u8>> {
    resize_u8(rgb, height, width, out_h, out_w, fr::FilterType::CatmullRom)
}

/// Antialiased bilinear (triangle) uint8 resize, two rounded passes like torch's uint8 path.
pub fn resize_bilinear_u8(rgb: &[u8], height: u32, width: u32, out_h: u32, out_w: u32) -> Result<Vec<u8>> {
    resize_u8(rgb, height, width, out_h, out_w, fr::FilterType::Bilinear)
}

fn resize_u8(rgb: &[u8], height: u32, width: u32, out_h: u32, out_w: u32, filter: fr::FilterType) -> Result<Vec<u8>> {
    let horizontal = resize_u8_once(rgb, height, width, height, out_w, filter)?;
    resize_u8_once(&horizontal, height, out_w, out_h, out_w, filter)
}

fn resize_u8_once(rgb: &[u8], height: u32, width: u32, out_h: u32, out_w: u32, filter: fr::FilterType) -> Result<Vec<u8>> {
    if height == out_h && width == out_w {
        return Ok(rgb.to_vec());
    }
    let src = fr::images::ImageRef::new(width, height, rgb, fr::PixelType::U8x3)
        .map_err(|e| crate::error::SmgError::InvalidArgument(format!("resize source: {e}")))?;
    let mut dst = fr::images::Image::new(out_w, out_h, fr::PixelType::U8x3);
    let opts = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(filter));
    fr::Resizer::new()
        .resize(&src, &mut dst, &opts)
        .map_err(|e| crate::error::SmgError::InvalidArgument(format!("resize: {e}")))?;
    Ok(dst.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimax_first_stage_sizes() {
        // below the cap: each side rounded up to 28
        assert_eq!(multiple_of_with_max_side(117, 203, 28, 756), (140, 224));
        // 1080p: ratio 756/1920, round(1080*0.39375)=425 -> 448
        assert_eq!(multiple_of_with_max_side(1080, 1920, 28, 756), (448, 756));
        // exact multiples stay
        assert_eq!(multiple_of_with_max_side(56, 84, 28, 756), (56, 84));
        // half-to-even: 50 * 0.5 = 25.0 exact; 1513 long side -> ratio 756/1513
        assert_eq!(multiple_of_with_max_side(1, 5, 28, 756), (28, 28));
    }

    #[test]
    fn smart_resize_branches() {
        assert_eq!(smart_resize_minimax(140, 224, 28, 3136, 602112, 200.0).unwrap(), (140, 224));
        // too small -> scaled up to at least min_pixels
        assert_eq!(smart_resize_minimax(28, 28, 28, 3136, 602112, 200.0).unwrap(), (56, 56));
        // too big -> floored under max_pixels
        let (h, w) = smart_resize_minimax(2000, 3000, 28, 3136, 602112, 200.0).unwrap();
        assert!(h as u64 * w as u64 <= 602112 && h % 28 == 0 && w % 28 == 0);
        assert_eq!((h, w), (616, 924));
        assert!(smart_resize_minimax(10, 2500, 28, 3136, 602112, 200.0).is_err());
        assert_eq!(smart_resize(117, 203, 28, 3136, 12845056, 200.0).unwrap(), (112, 196));
    }

    #[test]
    fn temporal_smart_resize_budget_covers_the_clip() {
        let q3 = |n, h, w, min, max| smart_resize_temporal(n, h, w, 2, 32, min, max, 200.0);
        // within budget: nearest multiples of 32 (half to even: 240/32 = 7.5 -> 8)
        assert_eq!(q3(8, 240, 320, 4096, 25_165_824).unwrap(), (256, 320));
        assert_eq!(q3(5, 96, 128, 4096, 25_165_824).unwrap(), (96, 128));
        // the budget is shared by the frames: 8 frames of 256x320 = 655360 fit in 786432,
        // 10 do not -> beta = sqrt(10*240*320/786432)
        assert_eq!(q3(8, 240, 320, 4096, 786_432).unwrap(), (256, 320));
        assert_eq!(q3(10, 240, 320, 4096, 786_432).unwrap(), (224, 320));
        // an odd count is rounded up to the temporal factor for the test (10 * 256 * 320 is
        // over), not for beta (sqrt(9*240*320/786432) = 0.9375 gives 256 x 320 again)
        assert_eq!(q3(9, 240, 320, 4096, 786_432).unwrap(), (256, 320));
        // tiny clip: scaled up to min_pixels (1 frame of 40x40 -> t_bar 2 * 32 * 32 < 4096)
        assert_eq!(q3(1, 40, 40, 4096, 25_165_824).unwrap(), (64, 64));
        assert_eq!(q3(4, 90, 160, 131_072, 786_432).unwrap(), (160, 256));
        // never below one factor, and slivers are refused
        assert_eq!(q3(700, 64, 6000, 4096, 786_432).unwrap(), (32, 320));
        assert!(q3(4, 31, 400, 4096, 25_165_824).is_err());
        assert!(q3(4, 32, 7000, 4096, 25_165_824).is_err());
    }

    /// Direct 2-D sum of the separable taps in f64, independent of the row streaming.
    fn reference_resize(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f64> {
        let (v, hz) = (AxisWeights::bicubic_aa(h, oh), AxisWeights::bicubic_aa(w, ow));
        let mut out = vec![0f64; oh * ow * 3];
        for y in 0..oh {
            let (y0, wv) = v.taps(y);
            for x in 0..ow {
                let (x0, wh) = hz.taps(x);
                for c in 0..3 {
                    let mut acc = 0f64;
                    for (i, &a) in wv.iter().enumerate() {
                        for (j, &b) in wh.iter().enumerate() {
                            acc += a as f64 * b as f64 * src[((y0 + i) * w + x0 + j) * 3 + c] as f64;
                        }
                    }
                    out[(y * ow + x) * 3 + c] = acc;
                }
            }
        }
        out
    }

    #[test]
    fn streamed_resize_matches_direct_sum_and_weights_are_normalized() {
        let (h, w) = (37, 53);
        let rgb: Vec<u8> = (0..h * w * 3).map(|i| ((i * 2654435761usize) >> 13) as u8).collect();
        let as_f32: Vec<f32> = rgb.iter().map(|&v| v as f32).collect();
        for (oh, ow) in [(28, 28), (56, 84), (37, 20), (14, 53), (100, 7)] {
            let want = reference_resize(&as_f32, h, w, oh, ow);
            let got8 = resize_bicubic_rgb8(&rgb, h as u32, w as u32, oh as u32, ow as u32).unwrap();
            let got = resize_bicubic(FloatFrame { height: h as u32, width: w as u32, data: as_f32.clone() }, oh as u32, ow as u32).unwrap();
            assert_eq!(got8, got);
            let err = got.data.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-3, "{oh}x{ow}: {err}");
            for n in [oh, ow] {
                let a = AxisWeights::bicubic_aa(if n == oh { h } else { w }, n);
                for i in 0..n {
                    let s: f32 = a.taps(i).1.iter().sum();
                    assert!((s - 1.0).abs() < 1e-5);
                }
            }
        }
        // the identity axis copies values exactly (the other axis still resamples)
        let r = resize_bicubic_rgb8(&rgb, h as u32, w as u32, h as u32, 20).unwrap();
        let want = reference_resize(&as_f32, h, w, h, 20);
        assert!(r.data.iter().zip(&want).all(|(a, b)| (*a as f64 - b).abs() < 1e-3));
    }

    #[test]
    fn identity_and_constant_resize() {
        let f = FloatFrame { height: 3, width: 5, data: (0..45).map(|v| v as f32).collect() };
        assert_eq!(resize_bicubic(f.clone(), 3, 5).unwrap(), f);
        // a constant image stays constant under a normalized kernel, up or down
        let c = FloatFrame { height: 17, width: 9, data: vec![77.5; 17 * 9 * 3] };
        for (h, w) in [(28, 28), (5, 3), (56, 14)] {
            let r = resize_bicubic(c.clone(), h, w).unwrap();
            assert_eq!(r.data.len(), (h * w * 3) as usize);
            assert!(r.data.iter().all(|v| (v - 77.5).abs() < 1e-3), "{h}x{w}");
        }
    }
}
