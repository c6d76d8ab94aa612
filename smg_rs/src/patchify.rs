//! Flattening of normalized frames into vision-encoder patches.
//!
//! Layout (shared by Qwen2-VL, Qwen3-VL and MiniMax-M3): one row per spatial patch, rows
//! ordered `(t, h_block, w_block, h_in_block, w_in_block)` where a block is
//! `merge x merge` patches, and each row holds `(channel, t_in_patch, y, x)` so that the
//! `temporal_patch` frames of one temporal group sit next to each other per channel.
use crate::normalize::Normalizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGeometry {
    pub patch: usize,
    pub temporal_patch: usize,
    pub merge: usize,
    pub channels: usize,
}

impl PatchGeometry {
    pub fn row_len(&self) -> usize {
        self.channels * self.temporal_patch * self.patch * self.patch
    }
    /// Grid `(grid_h, grid_w)` in patches for a frame of `height x width`.
    pub fn grid_hw(&self, height: usize, width: usize) -> (usize, usize) {
        (height / self.patch, width / self.patch)
    }
    /// Number of temporal groups for `frames` frames (the last frame repeats to fill a group).
    pub fn grid_t(&self, frames: usize) -> usize {
        frames.div_ceil(self.temporal_patch)
    }
}

/// Element type of the output buffer.
pub trait OutElem: Copy + Send + Sync + Default + 'static {
    fn from_f32(v: f32) -> Self;
}
impl OutElem for f32 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl OutElem for half::f16 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

/// Writes one temporal group. `frames` are interleaved-RGB float frames (0..255 scale) of
/// `height x width`, exactly `temporal_patch` of them (repeat the last one to pad). `out` is
/// the group's rows: `grid_h * grid_w * row_len` elements.
pub fn patchify_group<T: OutElem>(
    frames: &[&[f32]],
    height: usize,
    width: usize,
    geom: &PatchGeometry,
    norm: &Normalizer,
    out: &mut [T],
) {
    let PatchGeometry { patch: p, temporal_patch: tp, merge: m, channels: c } = *geom;
    assert_eq!(frames.len(), tp, "a temporal group needs exactly temporal_patch frames");
    assert!(height % (p * m) == 0 && width % (p * m) == 0, "size must be a multiple of patch*merge");
    let (gh, gw) = (height / p, width / p);
    let row_len = geom.row_len();
    assert_eq!(out.len(), gh * gw * row_len);
    for f in frames {
        assert_eq!(f.len(), height * width * c);
    }
    let (bh_n, bw_n) = (gh / m, gw / m);
    let mut row = 0usize;
    for bh in 0..bh_n {
        for bw in 0..bw_n {
            for mh in 0..m {
                for mw in 0..m {
                    let y0 = (bh * m + mh) * p;
                    let x0 = (bw * m + mw) * p;
                    let dst = &mut out[row * row_len..(row + 1) * row_len];
                    for ch in 0..c {
                        for (ti, frame) in frames.iter().enumerate() {
                            let base = (ch * tp + ti) * p * p;
                            for py in 0..p {
                                let src_row = ((y0 + py) * width + x0) * c + ch;
                                let d = &mut dst[base + py * p..base + py * p + p];
                                for (px, slot) in d.iter_mut().enumerate() {
                                    *slot = T::from_f32(norm.apply(frame[src_row + px * c], ch));
                                }
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }
}

/// Where each pixel of a frame goes in the patch layout, for writing frames straight into the
/// output (no patchify pass over a resized copy). For output pixel `(y, x)`, channel `c`, of the
/// frame in temporal slot `ti` of a group, the element is
/// `row_base[y] + col_base[x] + (c * temporal_patch + ti) * patch^2` from the group's start.
#[derive(Debug, Clone)]
pub struct FrameLayout {
    pub geom: PatchGeometry,
    pub height: usize,
    pub width: usize,
    row_base: Vec<usize>,
    col_base: Vec<usize>,
}

impl FrameLayout {
    pub fn new(geom: PatchGeometry, height: usize, width: usize) -> Self {
        let PatchGeometry { patch: p, merge: m, .. } = geom;
        assert!(height % (p * m) == 0 && width % (p * m) == 0, "size must be a multiple of patch*merge");
        let row_len = geom.row_len();
        let bw_n = width / p / m;
        let row_base = (0..height)
            .map(|y| {
                let (gy, py) = (y / p, y % p);
                ((gy / m) * bw_n * m * m + (gy % m) * m) * row_len + py * p
            })
            .collect();
        let col_base = (0..width)
            .map(|x| {
                let (gx, px) = (x / p, x % p);
                ((gx / m) * m * m + gx % m) * row_len + px
            })
            .collect();
        Self { geom, height, width, row_base, col_base }
    }

    /// Elements of one temporal group.
    pub fn group_len(&self) -> usize {
        (self.height / self.geom.patch) * (self.width / self.geom.patch) * self.geom.row_len()
    }

    /// Writes one band of `patch` normalized output rows to the temporal slots `slots` of the
    /// group starting at `group`, patch by patch in output order (contiguous `patch^2` runs per
    /// channel and slot). `band` is planar: row `py` of channel `c` is
    /// `band[(c * patch + py) * width..][..width]`, so each patch row is one contiguous run.
    ///
    /// # Safety
    /// `group` must point to `group_len()` writable elements that nobody else reads or writes
    /// at the positions of these slots while this runs (other slots may be written by others).
    pub unsafe fn write_band<T: OutElem>(&self, group: *mut T, slots: std::ops::Range<usize>, gy: usize, band: &[f32]) {
        let PatchGeometry { patch: p, temporal_patch: tp, channels: c, .. } = self.geom;
        assert!(c == 3 && band.len() == 3 * p * self.width && gy < self.height / p && slots.end <= tp);
        // the usual patch size as a constant: fixed-length runs compile to plain moves
        match p {
            14 => self.write_band_runs::<T, 14>(group, slots, gy, band),
            _ => self.write_band_runs::<T, 0>(group, slots, gy, band),
        }
    }

    /// `P`: the patch size when known at compile time, else 0.
    #[inline(always)]
    unsafe fn write_band_runs<T: OutElem, const P: usize>(&self, group: *mut T, slots: std::ops::Range<usize>, gy: usize, band: &[f32]) {
        let PatchGeometry { patch: p, temporal_patch: tp, .. } = self.geom;
        let p = if P > 0 { P } else { p };
        let (w, pp) = (self.width, p * p);
        let rb = self.row_base[gy * p];
        for gx in 0..w / p {
            let base = rb + self.col_base[gx * p];
            for ch in 0..3 {
                for ti in slots.clone() {
                    let dst = group.add(base + (ch * tp + ti) * pp);
                    for py in 0..p {
                        let src = &band[(ch * p + py) * w + gx * p..][..p];
                        for (px, &v) in src.iter().enumerate() {
                            dst.add(py * p + px).write(T::from_f32(v));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index-by-index statement of the layout, written independently of the loops above.
    fn reference_value(
        frames: &[Vec<f32>],
        h: usize,
        w: usize,
        g: &PatchGeometry,
        row: usize,
        col: usize,
    ) -> f32 {
        let (p, tp, m, c) = (g.patch, g.temporal_patch, g.merge, g.channels);
        let (gh, gw) = (h / p, w / p);
        let per_t = gh * gw;
        let t = row / per_t;
        let r = row % per_t;
        let (bw_n,) = (gw / m,);
        let block = r / (m * m);
        let in_block = r % (m * m);
        let (bh, bw) = (block / bw_n, block % bw_n);
        let (mh, mw) = (in_block / m, in_block % m);
        let ch = col / (tp * p * p);
        let ti = (col / (p * p)) % tp;
        let py = (col / p) % p;
        let px = col % p;
        let y = (bh * m + mh) * p + py;
        let x = (bw * m + mw) * p + px;
        frames[t * tp + ti][(y * w + x) * c + ch]
    }

    #[test]
    fn layout_matches_index_formula() {
        let g = PatchGeometry { patch: 2, temporal_patch: 2, merge: 2, channels: 3 };
        let (h, w) = (8, 12);
        let frames: Vec<Vec<f32>> = (0..4)
            .map(|f| (0..h * w * 3).map(|i| (f * 1000 + i) as f32).collect())
            .collect();
        let identity = Normalizer { mean_scaled: [0.0; 3], std_scaled: [1.0; 3] };
        let (gh, gw) = g.grid_hw(h, w);
        let mut out = vec![f32::NAN; 2 * gh * gw * g.row_len()];
        let rows_per_t = gh * gw * g.row_len();
        for t in 0..2 {
            let refs: Vec<&[f32]> = frames[t * 2..t * 2 + 2].iter().map(|v| v.as_slice()).collect();
            patchify_group(&refs, h, w, &g, &identity, &mut out[t * rows_per_t..(t + 1) * rows_per_t]);
        }
        for row in 0..2 * gh * gw {
            for col in 0..g.row_len() {
                let got = out[row * g.row_len() + col];
                assert_eq!(got, reference_value(&frames, h, w, &g, row, col), "row {row} col {col}");
            }
        }
    }

    #[test]
    fn frame_layout_writes_what_patchify_group_writes() {
        // a small patch (the generic path) and the usual 14 (its fixed-length path)
        for (patch, h, w) in [(2, 8, 12), (14, 56, 84)] {
            layout_case(PatchGeometry { patch, temporal_patch: 2, merge: 2, channels: 3 }, h, w);
        }
    }

    fn layout_case(g: PatchGeometry, h: usize, w: usize) {
        let frames: Vec<Vec<f32>> = (0..2).map(|f| (0..h * w * 3).map(|i| (f * 1000 + i) as f32).collect()).collect();
        let norm = Normalizer::new([0.4, 0.5, 0.6], [0.2, 0.3, 0.25], 1.0 / 255.0);
        let layout = FrameLayout::new(g, h, w);
        // two frames of one group, then one frame padding its group (written to both slots)
        for (refs, slots) in [(vec![0usize, 1], vec![0..1, 1..2]), (vec![1, 1], vec![0..2])] {
            let want_refs: Vec<&[f32]> = refs.iter().map(|&i| frames[i].as_slice()).collect();
            let mut want = vec![f32::NAN; layout.group_len()];
            patchify_group(&want_refs, h, w, &g, &norm, &mut want);
            let mut got = vec![f32::NAN; layout.group_len()];
            for (fi, sl) in refs.iter().zip(slots) {
                for (gy, rows) in frames[*fi].chunks_exact(g.patch * w * 3).enumerate() {
                    let mut band = vec![f32::NAN; 3 * g.patch * w];
                    for (py, row) in rows.chunks_exact(w * 3).enumerate() {
                        let (r, rest) = band[py * w..].split_at_mut(g.patch * w);
                        let (gp, bp) = rest.split_at_mut(g.patch * w);
                        norm.apply_rgb_row_planar(row, [&mut r[..w], &mut gp[..w], &mut bp[..w]]);
                    }
                    unsafe { layout.write_band(got.as_mut_ptr(), sl.clone(), gy, &band) };
                }
            }
            assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn grid_t_pads_up() {
        let g = PatchGeometry { patch: 14, temporal_patch: 2, merge: 2, channels: 3 };
        assert_eq!(g.grid_t(1), 1);
        assert_eq!(g.grid_t(5), 3);
        assert_eq!(g.row_len(), 1176);
    }
}
