//! Per-stage timing of the post-decode work for the minimax_m3 preset on synthetic frames of
//! the bench's source sizes, per frame: `cargo run --release --example stages`.
use smg_rs::normalize::Normalizer;
use fast_image_resize as fr;
use smg_rs::patchify::{patchify_group, FrameLayout};
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
        let (mut o_conv, mut o_resize, mut o_patch) = (vec![], vec![], vec![]);
        let mut old_out = vec![0f32; layout.group_len()];
        for _ in 0..reps {
            let t0 = Instant::now();
            let v = AxisWeights::bicubic_aa(h as usize, oh);
            let hw = AxisWeights::bicubic_aa(w as usize, ow);
            let t1 = Instant::now();
            let mut sink = 0f32;
            resample_rgb_rows(&rgb, &v, &hw, &mut scratch, &mut |_, r| sink += r[0]);
            let t2 = Instant::now();
            let ptr = out.as_mut_ptr();
            let p = geom.patch;
            let mut band = vec![0f32; 3 * p * ow];
            resample_rgb_rows(&rgb, &v, &hw, &mut scratch, &mut |y, r| {
                let (pr, rest) = band[(y % p) * ow..].split_at_mut(p * ow);
                let (pg, pb) = rest.split_at_mut(p * ow);
                norm.apply_rgb_row_planar(r, [&mut pr[..ow], &mut pg[..ow], &mut pb[..ow]]);
                if y % p == p - 1 {
                    unsafe { layout.write_band(ptr, 0..1, y / p, &band) };
                }
            });
            let t3 = Instant::now();
            std::hint::black_box(sink);
            t_w.push((t1 - t0).as_secs_f64() * 1e3);
            t_resize.push((t2 - t1).as_secs_f64() * 1e3);
            t_all.push((t3 - t2).as_secs_f64() * 1e3);
            // the previous path: float copy of the frame, fast_image_resize F32x3 CatmullRom,
            // then normalize + patchify of a group (per frame = half a group)
            let t0 = Instant::now();
            let src: Vec<f32> = rgb.iter().map(|&v| v as f32).collect();
            let t1 = Instant::now();
            let mut dst = vec![0f32; oh * ow * 3];
            {
                let sb = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const u8, src.len() * 4) };
                let db = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, dst.len() * 4) };
                let si = fr::images::ImageRef::new(w, h, sb, fr::PixelType::F32x3).unwrap();
                let mut di = fr::images::Image::from_slice_u8(ow as u32, oh as u32, db, fr::PixelType::F32x3).unwrap();
                let opts = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom));
                fr::Resizer::new().resize(&si, &mut di, &opts).unwrap();
            }
            let t2 = Instant::now();
            patchify_group(&[&dst, &dst], oh, ow, &geom, &norm, &mut old_out);
            let t3 = Instant::now();
            o_conv.push((t1 - t0).as_secs_f64() * 1e3);
            o_resize.push((t2 - t1).as_secs_f64() * 1e3);
            o_patch.push((t3 - t2).as_secs_f64() * 1e3 / 2.0);
        }
        let (c, r, pt) = (median(o_conv), median(o_resize), median(o_patch));
        println!("{w}x{h} -> {ow}x{oh}: previous: u8->f32 {c:.2} ms, resize {r:.2} ms, normalize+patchify {pt:.2} ms = {:.2} ms per frame", c + r + pt);
        let (r, a) = (median(t_resize), median(t_all));
        println!(
            "{w}x{h} -> {ow}x{oh}: fused:    weights {:.3} ms, resize from u8 {r:.2} ms, + normalize/patch write {:.2} ms = {a:.2} ms per frame",
            median(t_w),
            a - r
        );
    }
}
