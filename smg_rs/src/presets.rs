//! Model presets: patch geometry, normalization constants, frame sampling and the resize plan.
use crate::error::{invalid, Result};
use crate::patchify::PatchGeometry;
use crate::resize;

const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// `size` of the Qwen3-VL checkpoints' video_preprocessor_config.json (whole-clip budget).
const QWEN3_MIN_PIXELS: u64 = 4096;
const QWEN3_MAX_PIXELS: u64 = 25_165_824;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// SGLang MiniMax-M3: constant rate, always keep the last frame.
    ConstantRate,
    /// SGLang's Qwen-VL rule: evenly spaced (truncated), count a multiple of `frame_factor`.
    Uniform { frame_factor: usize, min_frames: usize, max_frames: usize },
    /// HF Qwen3-VL video processor: evenly spaced (rounded), any count in
    /// `[min_frames, max_frames]`.
    RoundedUniform { min_frames: usize, max_frames: usize },
}

/// Resampling kernel of one resize stage (both antialiased, PIL-style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bicubic,
    Bilinear,
}

/// One resize stage: target `(height, width)` and kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub height: u32,
    pub width: u32,
    pub filter: Filter,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizePlan {
    /// SGLang MiniMax-M3: cap the long side (rounded up to the factor), then the HF
    /// processor's `smart_resize` on that (a second resize when it changes the size).
    MiniMax { min_pixels: u64, max_pixels: u64 },
    /// SGLang Qwen-VL: `smart_resize` with a per-frame budget shrinking with the frame
    /// count (`total_pixels / n * 2`), bilinear; then the HF video processor's `smart_resize`
    /// (`hf_min_pixels`..`max_pixels`), bicubic, when it changes the size.
    Qwen { min_pixels: u64, max_pixels: u64, total_pixels: u64, hf_min_pixels: u64 },
    /// HF Qwen3-VL video processor: one bicubic `smart_resize` whose `min_pixels..max_pixels`
    /// budget covers the whole clip (frame count rounded up to the temporal patch).
    Qwen3 { min_pixels: u64, max_pixels: u64 },
    /// SGLang's Qwen3-VL path: SGLang's Qwen-VL first stage (as `Qwen`, but on multiples of
    /// `first_factor`, 28, not of the model's 32), bilinear; then the HF Qwen3-VL processor's
    /// clip-wide `smart_resize` (`hf_min_pixels..hf_max_pixels`), bicubic, when it changes the size.
    Qwen3Sglang { first_factor: u32, min_pixels: u64, max_pixels: u64, total_pixels: u64, hf_min_pixels: u64, hf_max_pixels: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub geometry: PatchGeometry,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    pub rescale_factor: f64,
    pub default_fps: f64,
    pub sampling: Sampling,
    pub size: SizePlan,
    pub max_aspect_ratio: f64,
    /// Frames stay uint8 between resize stages (the reference resizes uint8 tensors) instead
    /// of float.
    pub uint8_resize: bool,
}

/// Per-call overrides of a preset's size plan.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SizeOverrides {
    /// Pixel budget per frame (the processor's `max_pixels`); for `SizePlan::Qwen3` the
    /// budget of the whole clip (the HF processor's `size["longest_edge"]`).
    pub max_pixels: Option<u64>,
    /// Long-side cap of the first stage (SGLang's `frame_max_size`); MiniMax only.
    pub max_long_side: Option<u32>,
}

impl Preset {
    pub fn by_name(name: &str) -> Result<Preset> {
        let geom = |patch| PatchGeometry { patch, temporal_patch: 2, merge: 2, channels: 3 };
        match name {
            "minimax_m3" => Ok(Preset {
                name: "minimax_m3",
                geometry: geom(14),
                mean: CLIP_MEAN,
                std: CLIP_STD,
                rescale_factor: 1.0 / 255.0,
                default_fps: 1.0,
                sampling: Sampling::ConstantRate,
                size: SizePlan::MiniMax { min_pixels: 4 * 28 * 28, max_pixels: 768 * 28 * 28 },
                max_aspect_ratio: 200.0,
                uint8_resize: false,
            }),
            "qwen2_vl" => Ok(Preset {
                name: "qwen2_vl",
                geometry: geom(14),
                mean: CLIP_MEAN,
                std: CLIP_STD,
                rescale_factor: 1.0 / 255.0,
                default_fps: 2.0,
                sampling: Sampling::Uniform { frame_factor: 2, min_frames: 4, max_frames: 768 },
                size: SizePlan::Qwen {
                    min_pixels: 128 * 28 * 28,
                    max_pixels: 768 * 28 * 28,
                    total_pixels: 90_316_800,
                    hf_min_pixels: 128 * 28 * 28,
                },
                max_aspect_ratio: 200.0,
                uint8_resize: true,
            }),
            // The HF Qwen3-VL video processor alone (it samples frames itself), with the `size`
            // the released Qwen3-VL checkpoints ship (shortest_edge 4096, longest_edge
            // 25165824; the class defaults are 131072 / 786432).
            "qwen3_vl" => Ok(Preset {
                name: "qwen3_vl",
                geometry: geom(16),
                mean: [0.5; 3],
                std: [0.5; 3],
                rescale_factor: 1.0 / 255.0,
                default_fps: 2.0,
                sampling: Sampling::RoundedUniform { min_frames: 4, max_frames: 768 },
                size: SizePlan::Qwen3 { min_pixels: QWEN3_MIN_PIXELS, max_pixels: QWEN3_MAX_PIXELS },
                max_aspect_ratio: 200.0,
                uint8_resize: true,
            }),
            // SGLang 0.5.17 serving Qwen3-VL: its Qwen-VL sampling and first resize (factor
            // 28, as for Qwen2-VL), then the HF processor above with do_sample_frames=False.
            "qwen3_vl_sglang" => Ok(Preset {
                name: "qwen3_vl_sglang",
                sampling: Sampling::Uniform { frame_factor: 2, min_frames: 4, max_frames: 768 },
                size: SizePlan::Qwen3Sglang {
                    first_factor: 28,
                    min_pixels: 128 * 28 * 28,
                    max_pixels: 768 * 28 * 28,
                    total_pixels: 90_316_800,
                    hf_min_pixels: QWEN3_MIN_PIXELS,
                    hf_max_pixels: QWEN3_MAX_PIXELS,
                },
                ..Self::by_name("qwen3_vl")?
            }),
            other => invalid(format!("unknown preset {other:?} (known: minimax_m3, qwen2_vl, qwen3_vl, qwen3_vl_sglang)")),
        }
    }

    pub fn factor(&self) -> u32 {
        (self.geometry.patch * self.geometry.merge) as u32
    }

    /// Frame indices to keep.
    pub fn sample(&self, total_frames: usize, video_fps: f64, fps: Option<f64>, max_frames: Option<usize>) -> Result<Vec<usize>> {
        let fps = fps.unwrap_or(self.default_fps);
        if !(fps > 0.0) || !fps.is_finite() {
            return invalid(format!("fps must be a positive finite number, got {fps}"));
        }
        Ok(match self.sampling {
            Sampling::ConstantRate => crate::sample::constant_rate_indices(total_frames, video_fps, fps, max_frames),
            Sampling::Uniform { frame_factor, min_frames, max_frames: cap } => {
                let cap = max_frames.unwrap_or(cap.min(total_frames));
                crate::sample::uniform_indices(total_frames, video_fps, fps, frame_factor, min_frames, Some(cap))
                    .ok_or_else(|| {
                        crate::error::SmgError::LimitExceeded(format!(
                            "video has {total_frames} frame(s); preset {} needs at least {frame_factor}",
                            self.name
                        ))
                    })?
            }
            Sampling::RoundedUniform { min_frames, max_frames: cap } => {
                if total_frames == 0 {
                    return invalid("video has no frames");
                }
                let cap = max_frames.unwrap_or(cap);
                crate::sample::rounded_uniform_indices(total_frames, video_fps, fps, min_frames, cap)
            }
        })
    }

    /// Model input `(height, width)` for a still image (the HF image processor: one
    /// `smart_resize` with the image pixel budget).
    pub fn image_size(&self, height: u32, width: u32, max_pixels: Option<u64>) -> Result<(u32, u32)> {
        let f = self.factor();
        match self.name {
            "minimax_m3" => resize::smart_resize_minimax(height, width, f, 4 * 28 * 28, max_pixels.unwrap_or(451_584), self.max_aspect_ratio),
            "qwen2_vl" => resize::smart_resize(height, width, f, 56 * 56, max_pixels.unwrap_or(28 * 28 * 1280), self.max_aspect_ratio),
            _ => resize::smart_resize(height, width, f, 64 * 64, max_pixels.unwrap_or(16_777_216), self.max_aspect_ratio),
        }
    }

    /// The successive resize stages for `frames` sampled frames of `height x width`; the last
    /// one is the model input size. Stages that would not change the size are left out.
    pub fn resize_plan(&self, height: u32, width: u32, ov: SizeOverrides, frames: usize) -> Result<Vec<Stage>> {
        let f = self.factor();
        let (first, second, filter1) = match self.size {
            SizePlan::MiniMax { min_pixels, max_pixels } => {
                let max_pixels = ov.max_pixels.unwrap_or(max_pixels);
                let side = match ov.max_long_side {
                    Some(s) => s,
                    None => {
                        let s = (max_pixels as f64).sqrt().floor() as u32;
                        let s = if (s as u64 + 1) * (s as u64 + 1) <= max_pixels { s + 1 } else { s };
                        s - s % f
                    }
                };
                if side < f {
                    return invalid(format!("max_long_side/max_pixels too small for a {f}-pixel factor"));
                }
                let first = resize::multiple_of_with_max_side(height, width, f, side);
                let second = resize::smart_resize_minimax(first.0, first.1, f, min_pixels, max_pixels, self.max_aspect_ratio)?;
                (first, second, Filter::Bicubic)
            }
            SizePlan::Qwen { min_pixels, max_pixels, total_pixels, hf_min_pixels } => {
                let first = sglang_qwen_first_stage(height, width, f, min_pixels, max_pixels, total_pixels, ov, frames, self.max_aspect_ratio)?;
                let second = resize::smart_resize_float(
                    first.0, first.1, f, hf_min_pixels as f64, max_pixels as f64, self.max_aspect_ratio, true,
                )?;
                (first, second, Filter::Bilinear)
            }
            SizePlan::Qwen3 { min_pixels, max_pixels } => {
                let max_pixels = ov.max_pixels.unwrap_or(max_pixels);
                let tp = self.geometry.temporal_patch;
                let only = resize::smart_resize_temporal(frames.max(1), height, width, tp, f, min_pixels, max_pixels, self.max_aspect_ratio)?;
                (only, only, Filter::Bicubic)
            }
            SizePlan::Qwen3Sglang { first_factor, min_pixels, max_pixels, total_pixels, hf_min_pixels, hf_max_pixels } => {
                let first = sglang_qwen_first_stage(height, width, first_factor, min_pixels, max_pixels, total_pixels, ov, frames, self.max_aspect_ratio)?;
                let tp = self.geometry.temporal_patch;
                let second = resize::smart_resize_temporal(frames.max(1), first.0, first.1, tp, f, hf_min_pixels, hf_max_pixels, self.max_aspect_ratio)?;
                (first, second, Filter::Bilinear)
            }
        };
        let mut plan = vec![Stage { height: first.0, width: first.1, filter: filter1 }];
        if second != first {
            plan.push(Stage { height: second.0, width: second.1, filter: Filter::Bicubic });
        }
        Ok(plan)
    }
}

/// SGLang's Qwen-VL first resize: `smart_resize` (no `max(factor, ..)` guard when shrinking)
/// with the per-frame budget `max(min(cfg_max, total / n * 2), int(min * 1.05))`, capped by an
/// explicitly configured max_pixels.
#[allow(clippy::too_many_arguments)]
fn sglang_qwen_first_stage(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
    total_pixels: u64,
    ov: SizeOverrides,
    frames: usize,
    max_ratio: f64,
) -> Result<(u32, u32)> {
    let n = frames.max(1) as f64;
    let cfg_max = ov.max_pixels.map_or(max_pixels as f64, |v| v as f64);
    let eff = cfg_max.min(total_pixels as f64 / n * 2.0).max((min_pixels as f64 * 1.05).floor());
    let budget = ov.max_pixels.map_or(eff, |v| (v as f64).min(eff));
    resize::smart_resize_float(height, width, factor, min_pixels as f64, budget, max_ratio, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimax_plan() {
        let p = Preset::by_name("minimax_m3").unwrap();
        // isqrt(602112) = 775 -> 756
        let sizes = |h, w, ov| -> Vec<(u32, u32)> {
            p.resize_plan(h, w, ov, 4).unwrap().iter().map(|s| (s.height, s.width)).collect()
        };
        assert_eq!(sizes(1080, 1920, SizeOverrides::default()), vec![(448, 756)]);
        assert_eq!(sizes(117, 203, SizeOverrides::default()), vec![(140, 224)]);
        // tiny frame: first stage 28x28, HF smart_resize then doubles it
        assert_eq!(sizes(20, 20, SizeOverrides::default()), vec![(28, 28), (56, 56)]);
        let ov = SizeOverrides { max_long_side: Some(224), max_pixels: None };
        assert_eq!(sizes(1080, 1920, ov), vec![(140, 224)]);
        assert!(Preset::by_name("nope").is_err());
    }

    #[test]
    fn qwen3_plans() {
        let sizes = |name, h, w, ov, n| -> Vec<(u32, u32, Filter)> {
            let p = Preset::by_name(name).unwrap();
            p.resize_plan(h, w, ov, n).unwrap().iter().map(|s| (s.height, s.width, s.filter)).collect()
        };
        let none = SizeOverrides::default();
        use Filter::{Bicubic, Bilinear};
        // HF alone: one bicubic stage; the clip-wide budget shrinks frames of long clips
        assert_eq!(sizes("qwen3_vl", 240, 320, none, 8), vec![(256, 320, Bicubic)]);
        assert_eq!(sizes("qwen3_vl", 1080, 1920, none, 120), vec![(320, 608, Bicubic)]);
        assert_eq!(sizes("qwen3_vl", 1080, 1920, none, 768), vec![(128, 224, Bicubic)]);
        let ov = SizeOverrides { max_pixels: Some(786_432), max_long_side: None };
        assert_eq!(sizes("qwen3_vl", 1080, 1920, ov, 7), vec![(224, 416, Bicubic)]);
        // SGLang: multiples of 28 first (bilinear), then HF's multiples of 32 (bicubic)
        assert_eq!(sizes("qwen3_vl_sglang", 240, 320, none, 8), vec![(280, 392, Bilinear), (288, 384, Bicubic)]);
        assert_eq!(sizes("qwen3_vl_sglang", 1080, 1920, none, 120), vec![(560, 1008, Bilinear), (320, 608, Bicubic)]);
        assert_eq!(sizes("qwen3_vl_sglang", 1080, 1920, none, 768), vec![(336, 644, Bilinear), (128, 224, Bicubic)]);
        // sampling: HF rounds and keeps odd counts; SGLang truncates and keeps them even
        let q3 = Preset::by_name("qwen3_vl").unwrap();
        assert_eq!(q3.sample(50, 50.0 / (1.0 + 58.0 / 30.0), None, None).unwrap(), vec![0, 12, 24, 37, 49]);
        assert_eq!(q3.sample(120, 30.0, Some(1.0), Some(3)).unwrap(), vec![0, 60, 119]);
        let sg = Preset::by_name("qwen3_vl_sglang").unwrap();
        assert_eq!(sg.sample(50, 50.0 / (1.0 + 58.0 / 30.0), None, None).unwrap(), vec![0, 16, 32, 49]);
    }
}
