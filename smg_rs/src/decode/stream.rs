//! Which stream of an opened input is decoded, and what its header says: codec (checked
//! against the allow-list), coded size, display orientation, time base, header rate, frame
//! count and duration.
use super::orient::Orientation;
use crate::error::{Result, SmgError};
use ffmpeg_next as ff;
use ff::ffi;
use std::ptr;

/// Codecs accepted for the video stream.
pub const ALLOWED_CODECS: &[ffi::AVCodecID] = &[
    ffi::AVCodecID::AV_CODEC_ID_H264,
    ffi::AVCodecID::AV_CODEC_ID_HEVC,
    ffi::AVCodecID::AV_CODEC_ID_VP8,
    ffi::AVCodecID::AV_CODEC_ID_VP9,
    ffi::AVCodecID::AV_CODEC_ID_AV1,
    ffi::AVCodecID::AV_CODEC_ID_MPEG4,
    ffi::AVCodecID::AV_CODEC_ID_MPEG2VIDEO,
    ffi::AVCodecID::AV_CODEC_ID_MPEG1VIDEO,
    ffi::AVCodecID::AV_CODEC_ID_MJPEG,
];

/// Codecs accepted for still images.
pub const IMAGE_CODECS: &[ffi::AVCodecID] = &[
    ffi::AVCodecID::AV_CODEC_ID_PNG,
    ffi::AVCodecID::AV_CODEC_ID_MJPEG,
    ffi::AVCodecID::AV_CODEC_ID_WEBP,
    ffi::AVCodecID::AV_CODEC_ID_BMP,
];

/// FFmpeg's NVDEC (cuvid) decoder for a stream, when this FFmpeg has one and NVDEC takes the
/// stream; `HardwareUnavailable` otherwise, before any decoding: a codec NVDEC does not take, an
/// FFmpeg built without cuvid (the system FFmpeg), chroma other than 4:2:0 or a size above NVDEC's
/// (4096 per side for H.264 and older codecs, 8192 for HEVC, VP9, AV1). A stream refused midway
/// would otherwise surface as a decode error that software decoding would not have.
pub(crate) fn cuvid_decoder(par: &ff::codec::Parameters) -> Result<(&'static str, ff::Codec)> {
    use ffi::AVCodecID::*;
    use ffi::AVPixelFormat::*;
    // SAFETY: the parameters of an open stream, only read.
    let (codec_id, format, w, h) = unsafe {
        let p = par.as_ptr();
        ((*p).codec_id, (*p).format, (*p).width, (*p).height)
    };
    let fmt_420 = [AV_PIX_FMT_YUV420P, AV_PIX_FMT_YUVJ420P, AV_PIX_FMT_YUV420P10LE, AV_PIX_FMT_YUV420P12LE];
    if let Some(other) = (!fmt_420.iter().any(|&f| f as i32 == format)).then_some(format) {
        let name = fmt_420
            .iter()
            .chain([AV_PIX_FMT_YUV422P, AV_PIX_FMT_YUV444P, AV_PIX_FMT_YUV422P10LE, AV_PIX_FMT_YUV444P10LE].iter())
            .find(|&&f| f as i32 == other)
            .map(|f| format!("{f:?}").trim_start_matches("AV_PIX_FMT_").to_lowercase())
            .unwrap_or_else(|| format!("#{other}"));
        return Err(SmgError::HardwareUnavailable(format!(
            "NVDEC: pixel format {name} is not 4:2:0 (decode in software)"
        )));
    }
    let max_side = match codec_id {
        AV_CODEC_ID_HEVC | AV_CODEC_ID_VP9 | AV_CODEC_ID_AV1 => 8192,
        _ => 4096,
    };
    if w > max_side || h > max_side {
        return Err(SmgError::HardwareUnavailable(format!("NVDEC: {w}x{h} is above {max_side} per side")));
    }
    let name = match codec_id {
        AV_CODEC_ID_H264 => "h264_cuvid",
        AV_CODEC_ID_HEVC => "hevc_cuvid",
        AV_CODEC_ID_VP8 => "vp8_cuvid",
        AV_CODEC_ID_VP9 => "vp9_cuvid",
        AV_CODEC_ID_AV1 => "av1_cuvid",
        AV_CODEC_ID_MPEG4 => "mpeg4_cuvid",
        AV_CODEC_ID_MPEG1VIDEO => "mpeg1_cuvid",
        AV_CODEC_ID_MPEG2VIDEO => "mpeg2_cuvid",
        AV_CODEC_ID_MJPEG => "mjpeg_cuvid",
        other => {
            return Err(SmgError::HardwareUnavailable(format!("NVDEC does not decode {other:?}")));
        }
    };
    ff::codec::decoder::find_by_name(name).map(|c| (name, c)).ok_or_else(|| {
        SmgError::HardwareUnavailable(format!(
            "NVDEC: this FFmpeg has no {name} decoder (the wheel's bundled FFmpeg has it; a system FFmpeg may not)"
        ))
    })
}

/// The chosen video stream, as its headers describe it.
pub(super) struct StreamHeader {
    pub index: usize,
    pub codec_id: ffi::AVCodecID,
    /// Lower-case codec name, for `VideoInfo::codec`.
    pub codec: String,
    /// Coded frame size (before the display orientation).
    pub width: u32,
    pub height: u32,
    pub orientation: Orientation,
    /// Seconds per time-base tick (0 when the stream has none).
    pub time_base: f64,
    pub header_fps: f64,
    pub header_frames: u64,
    pub header_duration: f64,
}

/// The stream FFmpeg itself would pick for video (`av_find_best_stream`, as the FFmpeg CLI,
/// TorchCodec and so SGLang do: default disposition first, then streams with several frames,
/// then bit rate), never a cover picture. Errors when there is none or its codec is not in
/// `codecs`.
pub(super) fn select(input: &mut ff::format::context::Input, codecs: &[ffi::AVCodecID]) -> Result<StreamHeader> {
    let is_cover = |s: &ff::format::stream::Stream| s.disposition().contains(ff::format::stream::Disposition::ATTACHED_PIC);
    let is_video = |s: &ff::format::stream::Stream| s.parameters().medium() == ff::media::Type::Video;
    // SAFETY: the context is open; FFmpeg only reads it here.
    let best = unsafe {
        ffi::av_find_best_stream(input.as_mut_ptr(), ffi::AVMediaType::AVMEDIA_TYPE_VIDEO, -1, -1, ptr::null_mut(), 0)
    };
    let inp: &ff::format::context::Input = input;
    let chosen = usize::try_from(best)
        .ok()
        .and_then(|i| inp.stream(i))
        .filter(|s| is_video(s) && !is_cover(s))
        // A cover picture can only win when it is the only video: fall back to any other video.
        .or_else(|| inp.streams().find(|s| is_video(s) && !is_cover(s)))
        .ok_or_else(|| SmgError::UnsupportedFormat("input has no video stream".into()))?;
    header(inp, &chosen, codecs)
}

fn header(inp: &ff::format::context::Input, stream: &ff::format::stream::Stream, codecs: &[ffi::AVCodecID]) -> Result<StreamHeader> {
    let par = stream.parameters();
    // SAFETY: codec parameters of an open stream.
    let (codec_id, w, h) = unsafe {
        let p = par.as_ptr();
        ((*p).codec_id, (*p).width.max(0) as u32, (*p).height.max(0) as u32)
    };
    let codec = format!("{:?}", par.id()).to_lowercase();
    if !codecs.contains(&codec_id) {
        return Err(SmgError::UnsupportedFormat(format!(
            "codec {codec} is not allowed (videos: h264, hevc, vp8, vp9, av1, mpeg4, mpeg1/2, mjpeg; images: png, jpeg, webp, bmp)"
        )));
    }
    let mut orientation = Orientation::Identity;
    for sd in stream.side_data() {
        if sd.kind() == ff::codec::packet::side_data::Type::DisplayMatrix && sd.data().len() >= 36 {
            let d = sd.data();
            let mut m = [0i32; 9];
            for (i, v) in m.iter_mut().enumerate() {
                *v = i32::from_ne_bytes(d[i * 4..i * 4 + 4].try_into().unwrap());
            }
            orientation = Orientation::from_display_matrix(&m);
        }
    }
    let tb = stream.time_base();
    let time_base = if tb.denominator() != 0 { tb.numerator() as f64 / tb.denominator() as f64 } else { 0.0 };
    let fps_of = |r: ff::Rational| {
        if r.denominator() != 0 && r.numerator() > 0 { r.numerator() as f64 / r.denominator() as f64 } else { 0.0 }
    };
    let (afr, rfr) = (stream.avg_frame_rate(), stream.rate());
    let header_fps = if fps_of(afr) > 0.0 { fps_of(afr) } else { fps_of(rfr) };
    let header_duration = if stream.duration() > 0 && time_base > 0.0 {
        stream.duration() as f64 * time_base
    } else if inp.duration() > 0 {
        inp.duration() as f64 / ffi::AV_TIME_BASE as f64
    } else {
        0.0
    };
    Ok(StreamHeader {
        index: stream.index(),
        codec_id,
        codec,
        width: w,
        height: h,
        orientation,
        time_base,
        header_fps,
        header_frames: stream.frames().max(0) as u64,
        header_duration,
    })
}
