//! Linking FFmpeg. Default: the system's shared libraries, found by ffmpeg-sys-next through
//! pkg-config; this script does nothing. With the `bundled-ffmpeg` feature (what the wheel
//! build uses), ffmpeg-sys-next links libavcodec/libavformat/libavutil/libswscale statically
//! from `FFMPEG_DIR`, the prefix scripts/build_ffmpeg.sh prints; this script checks that the
//! prefix really is that build (not, say, /usr with Debian's GPL static libraries) and adds the
//! two static libraries FFmpeg itself depends on there: dav1d (AV1) and zlib (PNG).
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FFMPEG_DIR");
    if env::var_os("CARGO_FEATURE_BUNDLED_FFMPEG").is_none() {
        return;
    }
    let dir = match env::var_os("FFMPEG_DIR") {
        Some(d) => PathBuf::from(d),
        None => panic!(
            "feature `bundled-ffmpeg` needs FFMPEG_DIR=<prefix printed by scripts/build_ffmpeg.sh> \
             (`pip install .` sets it; or build against the system FFmpeg without the feature)"
        ),
    };
    let marker = dir.join("share/licenses/BUILD-INFO.txt");
    if !dir.join(".complete").is_file() || !marker.is_file() {
        panic!(
            "FFMPEG_DIR={} is not a finished scripts/build_ffmpeg.sh prefix (no .complete / {})",
            dir.display(),
            marker.display()
        );
    }
    let lib = dir.join("lib");
    for name in ["dav1d", "z"] {
        let a = lib.join(format!("lib{name}.a"));
        if !a.is_file() {
            panic!("{} is missing: rerun scripts/build_ffmpeg.sh", a.display());
        }
        println!("cargo:rerun-if-changed={}", a.display());
    }
    println!("cargo:rerun-if-changed={}", dir.join(".complete").display());
    println!("cargo:rustc-link-search=native={}", lib.display());
    // Whole archives: these come before ffmpeg-sys-next's libavcodec on the link line, and a
    // plain static archive placed there would contribute nothing (nothing refers to it yet).
    println!("cargo:rustc-link-lib=static:+whole-archive=dav1d");
    println!("cargo:rustc-link-lib=static:+whole-archive=z");
}
