//! Arbitrary bytes through the whole in-memory path: must return Ok or a typed error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smg_rs::avio::Source;
use smg_rs::limits::Limits;
use smg_rs::pipeline::{preprocess_video, VideoRequest};
use smg_rs::presets::Preset;

fuzz_target!(|data: &[u8]| {
    let preset = Preset::by_name("minimax_m3").unwrap();
    let req = VideoRequest {
        threads: Some(1),
        limits: Limits { timeout_s: 2.0, max_frame_pixels: 1 << 20, max_source_frames: 512, ..Limits::default() },
        ..VideoRequest::default()
    };
    let _ = preprocess_video::<f32>(Source::Bytes(data), &preset, &req);
});
