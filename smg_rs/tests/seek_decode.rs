//! Keyframe seeking in `decode_selected`: sparse selections over short-GOP videos (made with
//! the ffmpeg CLI, skipped when it is missing) must seek, and every delivered frame must be
//! byte-identical to the same frame from a decode of every frame (which cannot seek).
use smg_rs::avio::Source;
use smg_rs::decode::{DecodeOptions, VideoDecoder};
use std::path::{Path, PathBuf};
use std::process::Command;

fn make_video(name: &str, codec: &[&str]) -> Option<PathBuf> {
    // one folder per video, removed by the caller once checked
    let dir = std::env::temp_dir().join(format!("smg_rs_seek_{}_{name}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let out = dir.join(name);
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"]);
    cmd.args(["-i", "testsrc2=size=128x72:rate=25:duration=4"]);
    cmd.args(codec).arg(&out);
    match cmd.status() {
        Ok(s) if s.success() => Some(out),
        _ => None,
    }
}

/// Decodes `indices` (in slot order) and returns the frames plus the decoder's stats.
fn decode(source: Source<'_>, indices: &[usize]) -> (Vec<Vec<u8>>, smg_rs::decode::DecodeStats) {
    decode_threads(source, indices, 1)
}

/// The same with `threads` (parallel GOP workers when >= 2). Frames must arrive in increasing
/// index order (callers rely on it), each slot exactly once.
fn decode_threads(source: Source<'_>, indices: &[usize], threads: usize) -> (Vec<Vec<u8>>, smg_rs::decode::DecodeStats) {
    let opts = DecodeOptions { threads, ..DecodeOptions::default() };
    let mut dec = VideoDecoder::open(source, opts).expect("open");
    let mut out: Vec<Option<Vec<u8>>> = vec![None; indices.len()];
    let mut last_index = 0;
    dec.decode_selected(indices, |slot, f| {
        assert_eq!(f.index, indices[slot]);
        assert!(f.index >= last_index, "frame {} delivered after frame {last_index}", f.index);
        last_index = f.index;
        assert!(out[slot].replace(f.data).is_none(), "slot {slot} delivered twice");
        Ok(())
    })
    .expect("decode");
    let out = out.into_iter().enumerate().map(|(slot, f)| f.unwrap_or_else(|| panic!("slot {slot} never delivered"))).collect();
    (out, dec.last_decode_stats())
}

fn check(path: &Path, gop: usize) {
    check_with(path, gop, |stats| assert_eq!(stats.restarts, 0, "{path:?}: {stats:?}"));
}

fn check_with(path: &Path, gop: usize, expect: impl Fn(&smg_rs::decode::DecodeStats)) {
    let n = VideoDecoder::open(Source::Path(path), DecodeOptions::default()).unwrap().info().num_frames;
    assert_eq!(n, 100);
    let all: Vec<usize> = (0..n).collect();
    let (full, full_stats) = decode(Source::Path(path), &all);
    assert_eq!(full_stats.seeks, 0);
    assert_eq!(full_stats.workers, 1);
    // far apart, on keyframes, just before keyframes, repeated and unordered, first and last
    let picks = vec![0, 3 * gop, 3 * gop - 1, 5 * gop + 2, 3 * gop, n - 1, 7 * gop - 1, 7 * gop];
    let data = std::fs::read(path).unwrap();
    for source in [Source::Path(path), Source::Bytes(&data)] {
        let (got, stats) = decode(source, &picks);
        eprintln!("{}: {stats:?}", path.display());
        assert!(stats.seeks > 0, "{path:?}: no seek happened ({stats:?})");
        expect(&stats);
        if stats.restarts == 0 {
            assert!(stats.packets_sent < n, "{path:?}: {stats:?}");
        }
        for (slot, &i) in picks.iter().enumerate() {
            assert!(got[slot] == full[i], "{path:?}: frame {i} differs after seeking");
        }
    }
}

/// Short-GOP H.264 encodes: keyframe every 12 frames, without and with two B-frames.
const H264_G12: &[&str] = &["-c:v", "libx264", "-preset", "ultrafast", "-g", "12", "-pix_fmt", "yuv420p"];
const H264_G12_B2: &[&str] = &["-c:v", "libx264", "-preset", "veryfast", "-g", "12", "-bf", "2", "-pix_fmt", "yuv420p"];

#[test]
fn sparse_selection_seeks_and_matches_full_decode() {
    let cases: [(&str, &[&str]); 5] = [
        ("h264_g12.mp4", H264_G12),
        ("h264_g12_b2.mkv", H264_G12_B2),
        ("vp9_g12.webm", &["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-g", "12"]),
        // x265 defaults to open GOPs: leading pictures are shown before their keyframe
        ("hevc_g12_open.mkv", &["-c:v", "libx265", "-preset", "ultrafast", "-g", "12", "-x265-params", "log-level=error"]),
        ("mpeg4_g12.avi", &["-c:v", "mpeg4", "-q:v", "4", "-g", "12"]),
    ];
    let mut ran = 0;
    for (name, codec) in cases {
        let Some(path) = make_video(name, codec) else { continue };
        check(&path, 12);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        ran += 1;
    }
    if ran == 0 {
        eprintln!("ffmpeg CLI missing: seek test skipped");
    }
}

#[test]
fn lying_keyframe_flags_fall_back_to_sequential_decode() {
    // An MP4 whose sync-sample table (the demuxer's seek index) names only the last frame,
    // while the packets' key flags (set by the H.264 parser) stay right: seeks to the real
    // keyframes find nothing at or before them. Decoding must restart in order.
    let Some(path) = make_video("h264_g12_badstss.mp4", H264_G12) else {
        eprintln!("ffmpeg CLI missing: seek test skipped");
        return;
    };
    let mut data = std::fs::read(&path).unwrap();
    let at = data.windows(4).position(|w| w == b"stss").expect("mp4 has an stss box");
    let count = u32::from_be_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
    assert!(count >= 8, "expected a keyframe every 12 frames, got {count}");
    for k in 0..count {
        let e = at + 12 + 4 * k;
        data[e..e + 4].copy_from_slice(&100u32.to_be_bytes());
    }
    let patched = path.with_file_name("h264_g12_badstss_patched.mp4");
    std::fs::write(&patched, &data).unwrap();
    check_with(&patched, 12, |stats| assert_eq!(stats.restarts, 1, "{stats:?}"));
    // parallel GOP workers hit the same bad seeks: the call falls back to one decoder in order
    let (full, _) = decode(Source::Path(&patched), &(0..100).collect::<Vec<_>>());
    let picks = [0, 36, 35, 62, 36, 99, 83, 84];
    for threads in [2, 3] {
        let (got, stats) = decode_threads(Source::Path(&patched), &picks, threads);
        assert!(stats.workers >= 2 && stats.restarts == 1, "{stats:?}");
        for (slot, &i) in picks.iter().enumerate() {
            assert!(got[slot] == full[i], "threads={threads}: frame {i} differs after the fallback");
        }
    }
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn parallel_gop_workers_match_full_decode() {
    let cases: [(&str, &[&str]); 2] = [
        ("h264_g12_par.mp4", H264_G12),
        ("h264_g12_b2_par.mkv", H264_G12_B2),
    ];
    let mut ran = 0;
    for (name, codec) in cases {
        let Some(path) = make_video(name, codec) else { continue };
        let n = VideoDecoder::open(Source::Path(&path), DecodeOptions::default()).unwrap().info().num_frames;
        let all: Vec<usize> = (0..n).collect();
        let (full, _) = decode(Source::Path(&path), &all);
        let data = std::fs::read(&path).unwrap();
        // spread over all GOPs, repeated and unordered, the last frame: uneven work per GOP run,
        // so the cost model may keep one decoder (with frame threads) instead
        let picks = vec![n - 1, 0, 30, 31, 30, 47, 48, 60, 5, 85, 99, 99, 13];
        // the last frame of each GOP (unordered, repeated): every run costs a whole GOP, balanced
        let gop_ends = vec![95, 11, 23, 23, 35, 47, 59, 71, 83, n - 1];
        for threads in [2, 3] {
            for (indices, balanced) in [(&picks, false), (&gop_ends, true), (&all, true)] {
                for source in [Source::Path(&path), Source::Bytes(&data)] {
                    let (got, stats) = decode_threads(source, indices, threads);
                    eprintln!("{name} threads={threads}: {stats:?}");
                    if balanced {
                        assert_eq!(stats.workers, threads, "{name}: {stats:?}");
                    } else {
                        assert!(stats.workers == 1 || stats.workers == threads, "{name}: {stats:?}");
                    }
                    assert_eq!(stats.restarts, 0, "{name}: {stats:?}");
                    for (slot, &i) in indices.iter().enumerate() {
                        assert!(got[slot] == full[i], "{name} threads={threads}: frame {i} differs");
                    }
                }
            }
        }
        // frames under one keyframe: nothing to split, one decoder
        let (got, stats) = decode_threads(Source::Path(&path), &[1, 5, 3], 2);
        assert_eq!(stats.workers, 1, "{stats:?}");
        assert!(got[0] == full[1] && got[1] == full[5] && got[2] == full[3]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        ran += 1;
    }
    if ran == 0 {
        eprintln!("ffmpeg CLI missing: parallel seek test skipped");
    }
}
