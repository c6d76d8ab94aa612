//! Output sizes (the reference processors' integer/float arithmetic, reproduced exactly) and
//! antialiased bicubic resampling of float frames.
use crate::error::{invalid, Result};
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
    if height == 0 || width == 0 {
        return invalid("resize target must be non-empty");
    }
    let bytes: &[u8] = f32_as_bytes(&src.data);
    let src_img = fr::images::ImageRef::new(src.width, src.height, bytes, fr::PixelType::F32x3)
        .map_err(|e| crate::error::SmgError::InvalidArgument(format!("resize source: {e}")))?;
    let mut out = vec![0f32; height as usize * width as usize * 3];
    {
        let out_bytes = f32_as_bytes_mut(&mut out);
        let mut dst = fr::images::Image::from_slice_u8(width, height, out_bytes, fr::PixelType::F32x3)
            .map_err(|e| crate::error::SmgError::InvalidArgument(format!("resize target: {e}")))?;
        let opts = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom));
        let mut resizer = fr::Resizer::new();
        resizer
            .resize(&src_img, &mut dst, &opts)
            .map_err(|e| crate::error::SmgError::InvalidArgument(format!("resize: {e}")))?;
    }
    Ok(FloatFrame { height, width, data: out })
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

fn f32_as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns; the length is scaled by its size.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn f32_as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: as above; every byte pattern written back is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
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
