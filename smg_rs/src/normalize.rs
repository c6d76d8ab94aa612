//! Rescale (1/255) + mean/std normalization, fused as the HF torchvision backend fuses it:
//! `(x - mean*255) / (std*255)` in float32, with the constants formed in float32.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalizer {
    pub mean_scaled: [f32; 3],
    pub std_scaled: [f32; 3],
}

impl Normalizer {
    pub fn new(mean: [f64; 3], std: [f64; 3], rescale_factor: f64) -> Self {
        // The reference makes float32 tensors from the constants, then multiplies them by
        // the Python float 1/rescale_factor, which torch rounds to float32 first.
        let k = (1.0 / rescale_factor) as f32;
        Self {
            mean_scaled: mean.map(|m| m as f32 * k),
            std_scaled: std.map(|s| s as f32 * k),
        }
    }

    #[inline(always)]
    pub fn apply(&self, value: f32, channel: usize) -> f32 {
        (value - self.mean_scaled[channel]) / self.std_scaled[channel]
    }
}

impl Normalizer {
    /// Normalizes an interleaved RGB row in place: the same division per value as [`apply`],
    /// over 12-value chunks (four pixels) so that it vectorizes.
    ///
    /// [`apply`]: Normalizer::apply
    pub fn apply_rgb_row(&self, row: &mut [f32]) {
        debug_assert_eq!(row.len() % 3, 0);
        let m: [f32; 12] = std::array::from_fn(|i| self.mean_scaled[i % 3]);
        let s: [f32; 12] = std::array::from_fn(|i| self.std_scaled[i % 3]);
        let mut chunks = row.chunks_exact_mut(12);
        for c in &mut chunks {
            for j in 0..12 {
                c[j] = (c[j] - m[j]) / s[j];
            }
        }
        for (j, v) in chunks.into_remainder().iter_mut().enumerate() {
            *v = (*v - m[j]) / s[j];
        }
    }

    /// Normalizes an interleaved RGB row into one row per channel (`planes[c][x]`), the same
    /// division per value as [`apply`]: the patch layout takes runs of one channel.
    ///
    /// [`apply`]: Normalizer::apply
    pub fn apply_rgb_row_planar(&self, row: &[f32], planes: [&mut [f32]; 3]) {
        let [r, g, b] = planes;
        let n = row.len() / 3;
        assert!(row.len() == n * 3 && r.len() == n && g.len() == n && b.len() == n);
        let (m, s) = (self.mean_scaled, self.std_scaled);
        for (x, px) in row.chunks_exact(3).enumerate() {
            r[x] = (px[0] - m[0]) / s[0];
            g[x] = (px[1] - m[1]) / s[1];
            b[x] = (px[2] - m[2]) / s[2];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_constants() {
        let n = Normalizer::new(
            [0.48145466, 0.4578275, 0.40821073],
            [0.26862954, 0.26130258, 0.27577711],
            1.0 / 255.0,
        );
        let v = n.apply(255.0, 0);
        let expect = ((1.0 - 0.48145466) / 0.26862954) as f32;
        assert!((v - expect).abs() < 1e-5, "{v} vs {expect}");
        assert!((n.apply(0.0, 2) + (0.40821073f32 / 0.27577711f32)).abs() < 1e-5);
        // channels are not mixed up
        assert!(n.apply(100.0, 0) != n.apply(100.0, 1));
        // the row form is the per-value form, bit for bit (remainders included)
        let row: Vec<f32> = (0..3 * 7).map(|i| i as f32 * 11.3).collect();
        let mut r = row.clone();
        n.apply_rgb_row(&mut r);
        for (i, (a, b)) in r.iter().zip(&row).enumerate() {
            assert_eq!(a.to_bits(), n.apply(*b, i % 3).to_bits());
        }
        let mut planes = vec![vec![f32::NAN; 7]; 3];
        let [pr, pg, pb] = &mut planes[..] else { unreachable!() };
        n.apply_rgb_row_planar(&row, [pr, pg, pb]);
        for (i, v) in row.iter().enumerate() {
            assert_eq!(planes[i % 3][i / 3].to_bits(), n.apply(*v, i % 3).to_bits());
        }
    }
}
