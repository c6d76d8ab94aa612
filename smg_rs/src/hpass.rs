//! Horizontal pass of the separable resize (interleaved RGB rows), scalar and AVX2+FMA.
//!
//! Both compute, per output pixel and channel, `acc = fma(w[k], col[x0 + k], acc)` for
//! k = 0.. from `acc = +0.0`, so they agree bit for bit (test below). The AVX2 path does two
//! pixels per 256-bit register (one per 128-bit lane: R, G, B and a spare component) over a
//! fixed tap count (the axis maximum): a pixel with fewer taps gets +0.0 weights, which leave
//! its sum unchanged (it starts at +0.0, so it is never -0.0, and `x + ±0.0 == x` otherwise).
use crate::resize::AxisWeights;

/// Per-frame tables of the AVX2 pass (reused between frames: no allocation once warm).
#[derive(Default)]
pub(crate) struct Pairs {
    input: usize,
    output: usize,
    taps: usize,
    /// Per pair: the first input pixel of each of its two outputs.
    starts: Vec<[u32; 2]>,
    /// Per pair and tap: the two weights, each repeated over the four lanes of its half.
    weights: Vec<[f32; 8]>,
}

impl Pairs {
    pub(crate) fn build(&mut self, h: &AxisWeights) {
        // every window starts inside the input: padded taps stay inside the padded column
        assert!(h.start.len() == h.output && h.start.iter().all(|&s| s < h.input));
        (self.input, self.output) = (h.input, h.output);
        self.taps = h.len.iter().copied().max().unwrap_or(0);
        let pairs = h.output / 2;
        self.starts.clear();
        self.weights.clear();
        self.weights.resize(pairs * self.taps, [0.0; 8]);
        for p in 0..pairs {
            let (a, b) = (2 * p, 2 * p + 1);
            self.starts.push([h.start[a] as u32, h.start[b] as u32]);
            for (half, i) in [a, b].into_iter().enumerate() {
                let w = &h.weights[i * h.stride..i * h.stride + h.len[i]];
                for (k, &wk) in w.iter().enumerate() {
                    self.weights[p * self.taps + k][half * 4..half * 4 + 4].fill(wk);
                }
            }
        }
    }

    /// Zero floats the column needs after its `h.input * 3` values: padded taps read up to
    /// `taps` pixels past a window start, four components at a time.
    pub(crate) fn column_padding(h: &AxisWeights) -> usize {
        h.len.iter().copied().max().unwrap_or(0) * 3 + 4
    }
}

/// `a * b + c`: fused where the caller runs with FMA, else two roundings (`mul_add` without
/// hardware FMA would be a libm call).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `row[x * 3 + c] = sum_k wh[k] * col[(x0 + k) * 3 + c]` for output pixels `from..`; `col` has
/// at least one float after the last pixel (four components are loaded at once).
#[inline(always)]
pub(crate) fn horizontal_scalar<const FMA: bool>(col: &[f32], h: &AxisWeights, row: &mut [f32], from: usize) {
    for (x, out) in row.chunks_exact_mut(3).enumerate().take(h.output).skip(from) {
        let (x0, wh) = h.taps(x);
        let mut acc = [0f32; 4];
        for (k, &wk) in wh.iter().enumerate() {
            let p = &col[(x0 + k) * 3..(x0 + k) * 3 + 4];
            for c in 0..4 {
                acc[c] = madd::<FMA>(wk, p[c], acc[c]);
            }
        }
        out.copy_from_slice(&acc[..3]);
    }
}

/// The AVX2 form of [`horizontal_scalar::<true>`]. `col`: the column plus
/// [`Pairs::column_padding`] zeros; `row`: `h.output * 3 + 1` floats (the last store spills one).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `pairs` must be built from `h`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn horizontal_avx2(col: &[f32], h: &AxisWeights, pairs: &Pairs, row: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = pairs.taps;
    assert!(col.len() >= h.input * 3 + Pairs::column_padding(h) && row.len() > h.output * 3);
    assert!(pairs.input == h.input && pairs.output == h.output, "pairs built for another axis");
    let (c, r) = (col.as_ptr(), row.as_mut_ptr());
    let wt = pairs.weights.as_ptr() as *const f32;
    // two pairs at a time: independent sums keep the FMA unit busy
    let mut p = 0;
    while p < pairs.starts.len() {
        let q = (p + 1).min(pairs.starts.len() - 1);
        let ([a0, b0], [a1, b1]) = (pairs.starts[p], pairs.starts[q]);
        let (w0, w1) = (wt.add(p * n * 8), wt.add(q * n * 8));
        let (pa0, pb0) = (c.add(a0 as usize * 3), c.add(b0 as usize * 3));
        let (pa1, pb1) = (c.add(a1 as usize * 3), c.add(b1 as usize * 3));
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for k in 0..n {
            let v0 = _mm256_loadu2_m128(pb0.add(k * 3), pa0.add(k * 3));
            let v1 = _mm256_loadu2_m128(pb1.add(k * 3), pa1.add(k * 3));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0.add(k * 8)), v0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1.add(k * 8)), v1, acc1);
        }
        // pair q after pair p: when q == p (odd pair count) both write the same values
        for (i, acc) in [(p, acc0), (q, acc1)] {
            let out = r.add(i * 6);
            _mm_storeu_ps(out, _mm256_castps256_ps128(acc));
            _mm_storeu_ps(out.add(3), _mm256_extractf128_ps(acc, 1));
        }
        p += 2;
    }
    // an odd last pixel: the scalar form (with FMA, as here)
    horizontal_scalar::<true>(col, h, &mut row[..h.output * 3], pairs.starts.len() * 2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_matches_scalar_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        {
            if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
                eprintln!("no AVX2+FMA on this CPU: nothing to compare");
                return;
            }
            let mut pairs = Pairs::default();
            for (input, output) in [(640, 644), (1280, 756), (1920, 756), (53, 37), (53, 20), (53, 14), (53, 30), (7, 100), (5, 3), (1, 2), (9, 1)] {
                let h = AxisWeights::bicubic_aa(input, output);
                pairs.build(&h);
                // negatives, zeros (either sign) and large values, as vertical passes produce
                let mut col: Vec<f32> = (0..input * 3)
                    .map(|i| match i % 7 {
                        0 => 0.0,
                        1 => -0.0,
                        _ => (((i * 2654435761usize) >> 11) % 600) as f32 * 0.731 - 100.0,
                    })
                    .collect();
                col.resize(input * 3 + Pairs::column_padding(&h), 0.0);
                let mut want = vec![f32::NAN; output * 3 + 1];
                horizontal_scalar::<true>(&col, &h, &mut want, 0);
                let mut got = vec![f32::NAN; output * 3 + 1];
                unsafe { horizontal_avx2(&col, &h, &pairs, &mut got) };
                let bits = |v: &[f32]| v[..output * 3].iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{input} -> {output}");
            }
        }
    }
}
