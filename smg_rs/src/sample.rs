//! Which source frames are kept.

/// Constant-rate sampling used by SGLang's MiniMax-M3 VL processor: keep frame 0, then the
/// first frame at least `1/fps` seconds (minus a 1e-4 s tolerance) after the previously
/// kept one, always keep the last frame, and thin evenly to `max_frames` (keeping the last).
/// Float operations follow the reference order so the indices are bit-for-bit the same.
pub fn constant_rate_indices(
    total_frames: usize,
    video_fps: f64,
    fps: f64,
    max_frames: Option<usize>,
) -> Vec<usize> {
    if total_frames == 0 {
        return Vec::new();
    }
    if !(video_fps > 0.0) || !(fps > 0.0) {
        return vec![0];
    }
    const EPS: f64 = 1e-4;
    let interval = 1.0 / fps;
    let mut kept: Vec<usize> = Vec::new();
    let mut prev_ts = f64::NEG_INFINITY;
    loop {
        let target = match kept.last() {
            None => 0usize,
            Some(&last) => {
                let ts = prev_ts + interval - EPS;
                let frame = (ts * video_fps).ceil();
                // A NaN/negative ceil can only come from degenerate input; clamp like max(.., last+1).
                let frame = if frame.is_finite() && frame > 0.0 { frame } else { 0.0 };
                if frame >= total_frames as f64 {
                    break;
                }
                (frame as usize).max(last + 1)
            }
        };
        if target >= total_frames {
            break;
        }
        kept.push(target);
        prev_ts = target as f64 / video_fps;
    }
    let last_idx = total_frames - 1;
    let last_ts = last_idx as f64 / video_fps;
    if let Some(&tail) = kept.last() {
        if tail != last_idx && last_ts - prev_ts > EPS {
            kept.push(last_idx);
        }
    }
    if kept.is_empty() {
        kept.push(0);
    }
    match max_frames {
        Some(cap) if cap > 0 && kept.len() > cap => {
            let last = *kept.last().unwrap();
            if cap == 1 {
                return vec![last];
            }
            let step = kept.len() as f64 / (cap - 1) as f64;
            let mut thinned: Vec<usize> =
                (0..cap - 1).map(|i| kept[(i as f64 * step) as usize]).collect();
            thinned.push(last);
            thinned
        }
        _ => kept,
    }
}

/// SGLang's Qwen-VL sampling: `n = total / video_fps * fps`, clamped to
/// `[min_frames, max_frames]` (both snapped to `frame_factor`) and to `total`, floored to a
/// multiple of `frame_factor`; indices `unique(int64(linspace(0, total-1, n)))` (truncation).
/// Returns `None` when the clip is too short for even `frame_factor` frames.
pub fn uniform_indices(
    total_frames: usize,
    video_fps: f64,
    fps: f64,
    frame_factor: usize,
    min_frames: usize,
    max_frames: Option<usize>,
) -> Option<Vec<usize>> {
    let f = frame_factor as f64;
    let min_n = (min_frames as f64 / f).ceil() * f;
    let cap = max_frames.unwrap_or(768.min(total_frames)) as f64;
    let max_n = (cap / f).floor() * f;
    let wanted = total_frames as f64 / video_fps * fps;
    let n = wanted.max(min_n).min(max_n).min(total_frames as f64);
    let n = (n / f).floor() * f;
    if !(n >= f && n <= total_frames as f64) {
        return None;
    }
    let n = n as usize;
    let last = (total_frames - 1) as f64;
    let step = last / (n - 1) as f64;
    let mut idx: Vec<usize> = (0..n)
        .map(|i| if i == n - 1 { last as usize } else { (i as f64 * step) as usize })
        .collect();
    idx.dedup();
    Some(idx)
}

/// The HF Qwen3-VL video processor's sampling: `n = int(total / video_fps * fps)` (truncated),
/// raised to `min_frames`, then capped by `max_frames` and by `total`; indices
/// `round(linspace(0, total-1, n))` (half to even). Unlike SGLang's Qwen-VL rule the count
/// need not be even (the last frame is repeated to fill the temporal group). A stream without
/// a usable rate is taken as 24 fps, as HF does without metadata.
pub fn rounded_uniform_indices(
    total_frames: usize,
    video_fps: f64,
    fps: f64,
    min_frames: usize,
    max_frames: usize,
) -> Vec<usize> {
    let video_fps = if video_fps > 0.0 && video_fps.is_finite() { video_fps } else { 24.0 };
    let wanted = total_frames as f64 / video_fps * fps;
    // saturating float -> int cast: a huge `fps` cannot wrap around
    let wanted = if wanted.is_finite() { wanted.trunc() as usize } else { usize::MAX };
    let n = wanted.max(min_frames).min(max_frames).min(total_frames);
    linspace_round(total_frames, n)
}

/// `round(linspace(0, total-1, n))` with numpy's half-to-even rounding.
pub fn linspace_round(total_frames: usize, n: usize) -> Vec<usize> {
    if n == 0 || total_frames == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![0];
    }
    let last = (total_frames - 1) as f64;
    let step = last / (n - 1) as f64;
    (0..n)
        .map(|i| {
            let x = if i == n - 1 { last } else { i as f64 * step };
            (x.round_ties_even() as usize).min(total_frames - 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fps_of_30fps_clip_keeps_every_30th_and_last() {
        let idx = constant_rate_indices(95, 30.0, 1.0, None);
        assert_eq!(idx, vec![0, 30, 60, 90, 94]);
    }

    #[test]
    fn last_frame_not_duplicated_when_on_grid() {
        let idx = constant_rate_indices(91, 30.0, 1.0, None);
        assert_eq!(idx, vec![0, 30, 60, 90]);
    }

    #[test]
    fn fractional_rates() {
        // 29.97 fps, 2 fps: targets ceil((k*0.5 - 1e-4 drift) * 29.97)
        let idx = constant_rate_indices(60, 29.97, 2.0, None);
        assert_eq!(&idx[..4], &[0, 15, 30, 45]);
        assert_eq!(*idx.last().unwrap(), 59);
        // sampling faster than the source keeps every frame
        assert_eq!(constant_rate_indices(5, 10.0, 50.0, None), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn max_frames_thinning_keeps_last() {
        let idx = constant_rate_indices(300, 10.0, 1.0, Some(4));
        // 30 kept (0,10,..,290) + 299; step = 31/3
        assert_eq!(idx, vec![0, 100, 200, 299]);
        assert_eq!(constant_rate_indices(300, 10.0, 1.0, Some(1)), vec![299]);
        assert_eq!(constant_rate_indices(300, 10.0, 1.0, Some(0)).len(), 31);
    }

    #[test]
    fn degenerate_inputs() {
        assert!(constant_rate_indices(0, 30.0, 1.0, None).is_empty());
        assert_eq!(constant_rate_indices(1, 30.0, 1.0, None), vec![0]);
        assert_eq!(constant_rate_indices(10, 0.0, 1.0, None), vec![0]);
    }

    #[test]
    fn linspace_rounding() {
        assert_eq!(linspace_round(10, 4), vec![0, 3, 6, 9]);
        assert_eq!(linspace_round(5, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(linspace_round(8, 1), vec![0]);
    }

    #[test]
    fn rounded_uniform_follows_hf_qwen3() {
        // 120 frames at 29.97 fps, 2 fps: int(8.008) = 8 frames, 119/7 = 17 exactly
        assert_eq!(rounded_uniform_indices(120, 30000.0 / 1001.0, 2.0, 4, 768), vec![0, 17, 34, 51, 68, 85, 102, 119]);
        // an odd count is kept (no snapping to the temporal patch) and indices are rounded:
        // 50 frames at 50/2.9333 fps, 2 fps -> int(5.87) = 5; 49/4 = 12.25, 36.75
        assert_eq!(rounded_uniform_indices(50, 50.0 / (1.0 + 58.0 / 30.0), 2.0, 4, 768), vec![0, 12, 24, 37, 49]);
        // short clip: raised to min_frames (4), half-to-even ties: 49/3 = 16.33, 32.67
        assert_eq!(rounded_uniform_indices(50, 25.0, 2.0, 4, 768), vec![0, 16, 33, 49]);
        assert_eq!(rounded_uniform_indices(9, 1.0, 0.25, 4, 768), vec![0, 3, 5, 8]); // 8/3: 2.67, 5.33
        assert_eq!(rounded_uniform_indices(5, 1.0, 1.0, 4, 768), vec![0, 1, 2, 3, 4]);
        // max_frames caps below min_frames; the frame count caps everything
        assert_eq!(rounded_uniform_indices(120, 30.0, 2.0, 4, 3), vec![0, 60, 119]); // 59.5 -> 60
        assert_eq!(rounded_uniform_indices(10, 30.0, 2.0, 4, 3), vec![0, 4, 9]); // 4.5 -> 4
        assert_eq!(rounded_uniform_indices(3, 30.0, 2.0, 4, 768), vec![0, 1, 2]);
        assert_eq!(rounded_uniform_indices(1, 30.0, 2.0, 4, 768), vec![0]);
        // sampling faster than the source keeps every frame, once
        assert_eq!(rounded_uniform_indices(6, 10.0, 50.0, 4, 768), vec![0, 1, 2, 3, 4, 5]);
        // unknown source rate: HF's 24 fps fallback (48 frames -> 4 at 2 fps)
        assert_eq!(rounded_uniform_indices(48, 0.0, 2.0, 2, 768), vec![0, 16, 31, 47]);
    }

    #[test]
    fn uniform_is_even_count_and_truncates() {
        let idx = uniform_indices(300, 30.0, 2.0, 2, 4, None).unwrap();
        assert_eq!(idx.len(), 20);
        assert_eq!(idx[0], 0);
        assert_eq!(*idx.last().unwrap(), 299);
        // step 299/19 = 15.74 -> int64 truncation, not rounding
        assert_eq!(idx[1], 15);
        // short clip: min 4 frames; 1-frame clip cannot give 2 frames
        assert_eq!(uniform_indices(10, 30.0, 2.0, 2, 4, None).unwrap(), vec![0, 3, 6, 9]);
        assert!(uniform_indices(1, 30.0, 2.0, 2, 4, None).is_none());
    }
}
