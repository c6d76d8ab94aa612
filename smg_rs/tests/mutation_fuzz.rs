//! Deterministic mutation fuzzing on stable Rust: small valid videos (made with the ffmpeg
//! CLI, skipped when it is missing) are bit-flipped, truncated, spliced and zeroed; every
//! mutant must come back as `Ok` or a typed error, never a panic, crash or hang.
use smg_rs::avio::Source;
use smg_rs::limits::Limits;
use smg_rs::pipeline::{preprocess_video, VideoRequest};
use smg_rs::presets::Preset;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn make_video(dir: &PathBuf, name: &str, args: &[&str]) -> Option<Vec<u8>> {
    let out = dir.join(name);
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10:duration=1"]);
    cmd.args(args).arg(&out);
    match cmd.status() {
        Ok(s) if s.success() => std::fs::read(&out).ok(),
        _ => None,
    }
}

/// xorshift64*: a fixed-seed generator so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    match rng.below(5) {
        0 => {
            for _ in 0..1 + rng.below(16) {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
        }
        1 => v.truncate(rng.below(v.len())),
        2 => {
            let (a, n) = (rng.below(v.len()), 1 + rng.below(256));
            for b in v.iter_mut().skip(a).take(n) {
                *b = 0xFF;
            }
        }
        3 => {
            let (a, b) = (rng.below(v.len()), rng.below(v.len()));
            let chunk: Vec<u8> = v[a.min(b)..a.max(b)].iter().take(4096).copied().collect();
            let at = rng.below(v.len());
            v.splice(at..at, chunk);
        }
        _ => {
            // corrupt a box/element size field near the start
            let i = rng.below(v.len().min(512));
            v[i] = rng.next() as u8;
        }
    }
    v
}

#[test]
fn mutated_videos_never_panic_or_hang() {
    let dir = std::env::temp_dir().join(format!("smg_rs_fuzz_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seeds: Vec<Vec<u8>> = [
        ("a.mp4", vec!["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]),
        ("b.mkv", vec!["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]),
        ("c.avi", vec!["-c:v", "mpeg4"]),
        // keyframes every 3 frames: the 1 fps sampling seeks (damaged indexes, lying flags)
        ("d.mp4", vec!["-c:v", "libx264", "-preset", "ultrafast", "-g", "3", "-bf", "1", "-pix_fmt", "yuv420p"]),
        ("e.mkv", vec!["-c:v", "libx264", "-preset", "ultrafast", "-g", "3", "-pix_fmt", "yuv420p"]),
    ]
    .iter()
    .filter_map(|(n, a)| make_video(&dir, n, a))
    .collect();
    let _ = std::fs::remove_dir_all(&dir);
    if seeds.is_empty() {
        eprintln!("ffmpeg CLI not available: skipping");
        return;
    }
    let preset = Preset::by_name("minimax_m3").unwrap();
    let req = VideoRequest {
        threads: Some(1),
        limits: Limits { timeout_s: 5.0, max_frame_pixels: 1 << 22, ..Limits::default() },
        ..VideoRequest::default()
    };
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let (mut ok, mut err) = (0, 0);
    for round in 0..400 {
        let seed = &seeds[round % seeds.len()];
        let data = mutate(seed, &mut rng);
        let t0 = Instant::now();
        match preprocess_video::<f32>(Source::Bytes(&data), &preset, &req) {
            Ok(f) => {
                assert_eq!(f.pixel_values.len(), f.rows * f.cols);
                assert!(f.pixel_values.iter().all(|v| v.is_finite()));
                ok += 1;
            }
            Err(_) => err += 1,
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "round {round} took {:?}", t0.elapsed());
    }
    eprintln!("mutants: {ok} decoded, {err} typed errors");
    assert!(err > 0, "mutations should break some inputs");
}
