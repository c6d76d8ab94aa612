//! Frame conversion: decoded pictures to packed RGB24 (swscale, set up as the FFmpeg CLI's
//! automatic scaler is), then turned for display.
use super::VideoInfo;
use crate::error::{limit, Result, SmgError};
use ffmpeg_next as ff;
use ff::ffi;
use std::ptr;

/// swscale flags of the conversion: the FFmpeg CLI's default for its automatic scaler
/// (`-sws_flags bicubic`), which TorchCodec's CPU path also matches byte for byte. With
/// bilinear, 8-bit 4:2:0 frames of even size came out the same, but 10-bit and odd-sized
/// 4:2:0 frames were up to 2.8 levels off (chroma upsampling).
const SWS_FLAGS: i32 = ffi::SWS_BICUBIC as i32;

/// RGB24 conversion (swscale) + display orientation, with a context cached per input format.
#[derive(Default)]
pub(super) struct Converter {
    sws: Option<(*mut ffi::SwsContext, (i32, u32, u32, i32, i32))>,
}

impl Drop for Converter {
    fn drop(&mut self) {
        if let Some((ctx, _)) = self.sws.take() {
            unsafe { ffi::sws_freeContext(ctx) };
        }
    }
}

impl Converter {
    /// `raw` (a decoded frame) as packed RGB24 in display orientation: width, height, pixels.
    pub(super) fn convert(&mut self, raw: *const ffi::AVFrame, info: &VideoInfo) -> Result<(u32, u32, Vec<u8>)> {
        let (w, h) = unsafe { ((*raw).width.max(0) as u32, (*raw).height.max(0) as u32) };
        // coded size announced by the header
        let (cw, ch) = info.orientation.display_size(info.width, info.height);
        if w == 0 || h == 0 {
            return Err(SmgError::VideoDecode("decoder returned an empty frame".into()));
        }
        if (w as u64) * (h as u64) > 7680 * 4320 * 4 {
            return limit("decoded frame is larger than the frame limit");
        }
        let fmt = unsafe { (*raw).format };
        let (space, range) = unsafe { ((*raw).colorspace as i32, (*raw).color_range as i32) };
        let key = (fmt, w, h, space, range);
        unsafe {
            if self.sws.as_ref().map(|s| s.1) != Some(key) {
                if let Some((old, _)) = self.sws.take() {
                    ffi::sws_freeContext(old);
                }
                // Frames whose size drifts from the stream header are scaled back to it, so
                // every delivered frame has the announced size.
                let ctx = ffi::sws_getContext(
                    w as i32,
                    h as i32,
                    std::mem::transmute::<i32, ffi::AVPixelFormat>(fmt),
                    cw as i32,
                    ch as i32,
                    ffi::AVPixelFormat::AV_PIX_FMT_RGB24,
                    SWS_FLAGS,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null(),
                );
                if ctx.is_null() {
                    return Err(SmgError::UnsupportedFormat(format!("cannot convert pixel format {fmt} to RGB")));
                }
                let full_range = (range == ffi::AVColorRange::AVCOL_RANGE_JPEG as i32) as i32;
                let src_coeffs = ffi::sws_getCoefficients(if (0..=10).contains(&space) { space } else { 2 });
                let dst_coeffs = ffi::sws_getCoefficients(ffi::SWS_CS_DEFAULT as i32);
                ffi::sws_setColorspaceDetails(ctx, src_coeffs, full_range, dst_coeffs, 1, 0, 1 << 16, 1 << 16);
                self.sws = Some((ctx, key));
            }
            let ctx = self.sws.as_ref().unwrap().0;
            // swscale's SIMD writers may store whole blocks of pixels past the row end (and
            // past the last row): give every row a multiple of 64 pixels plus a spare row.
            let stride = (cw as usize).div_ceil(64) * 64 * 3;
            let mut buf = vec![0u8; stride * (ch as usize + 1)];
            let dst_planes = [buf.as_mut_ptr(), ptr::null_mut(), ptr::null_mut(), ptr::null_mut()];
            let dst_strides = [stride as i32, 0, 0, 0];
            let got = ffi::sws_scale(
                ctx,
                (*raw).data.as_ptr() as *const *const u8,
                (*raw).linesize.as_ptr(),
                0,
                h as i32,
                dst_planes.as_ptr(),
                dst_strides.as_ptr(),
            );
            if got <= 0 {
                return Err(SmgError::VideoDecode("pixel conversion failed".into()));
            }
            let mut packed = Vec::with_capacity(cw as usize * ch as usize * 3);
            for row in buf.chunks_exact(stride).take(ch as usize) {
                packed.extend_from_slice(&row[..cw as usize * 3]);
            }
            Ok(info.orientation.apply(packed, cw, ch))
        }
    }
}
