//! Per-stage timing of the post-decode work for the minimax_m3 preset on synthetic frames of
//! the bench's source sizes, per frame: `cargo run --release --example stages`.
use smg_rs::normalize::Normalizer;
use smg_rs::patchify::FrameLayout;
use smg_rs::presets::{Preset, SizeOverrides};
use smg_rs::resize::{resample_rgb_rows, AxisWeights, ResampleScratch};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let preset = Preset::by_name("minimax_m3").unwrap();
    let norm = Normalizer::new(preset.mean, preset.std, preset.rescale_factor);
    let geom = preset.geometry;
    let reps = 21;
    for (w, h) in [(640u32, 360u32), (1280, 720), (1920, 1080)] {
        let plan = preset.resize_plan(h, w, SizeOverrides::default(), 12).unwrap();
        let (oh, ow) = (plan.last().unwrap().height as usize, plan.last().unwrap().width as usize);
        let rgb: Vec<u8> = (0..(w * h * 3) as usize).map(|i| ((i * 2654435761usize) >> 13) as u8).collect();
        let layout = FrameLayout::new(geom, oh, ow);
        let mut out = vec![0f32; layout.group_len()];
        let mut scratch = ResampleScratch::default();
        let (mut t_w, mut t_resize, mut t_all) = (vec![], vec![], vec![]);
        for _ in 0..reps {
            let t0 = Instant::now();
            let v = AxisWeights::bicubic_aa(h as usize, oh);
            let hw = AxisWeights::bicubic_aa(w as usize, ow);
            let t1 = Instant::now();
            let mut sink = 0f32;
            resample_rgb_rows(&rgb, &v, &hw, &mut scratch, &mut |_, r| sink += r[0]);
            let t2 = Instant::now();
            let ptr = out.as_mut_ptr();
            resample_rgb_rows(&rgb, &v, &hw, &mut scratch, &mut |y, r| unsafe { layout.write_row(ptr, 0..1, y, r, &norm) });
            let t3 = Instant::now();
            std::hint::black_box(sink);
            t_w.push((t1 - t0).as_secs_f64() * 1e3);
            t_resize.push((t2 - t1).as_secs_f64() * 1e3);
            t_all.push((t3 - t2).as_secs_f64() * 1e3);
        }
        let (r, a) = (median(t_resize), median(t_all));
        println!(
            "{w}x{h} -> {ow}x{oh}: weights {:.3} ms, resize from u8 {r:.2} ms, + normalize/patch write {:.2} ms = {a:.2} ms per frame",
            median(t_w),
            a - r
        );
    }
}
