//! Opening an input (a file path or an in-memory buffer) with a format and protocol
//! allow-list, a wall-clock interrupt, and early header checks. In-memory input goes
//! through a custom AVIO read/seek context over the caller's buffer: no copy, no temp file.
use crate::error::{Result, SmgError};
use crate::limits::Limits;
use ffmpeg_next as ff;
use ff::ffi;
use std::ffi::{c_int, c_void, CString};
use std::path::Path;
use std::ptr;
use std::sync::Once;
use std::time::Instant;

/// Demuxers accepted after probing (FFmpeg names; a probed format must match one of them).
pub const ALLOWED_FORMATS: &str = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts";
/// Demuxers accepted for still images (`preprocess_image` with encoded bytes).
pub const IMAGE_FORMATS: &str = "png_pipe,jpeg_pipe,webp_pipe,bmp_pipe";

pub enum Source<'a> {
    Path(&'a Path),
    Bytes(&'a [u8]),
}

impl Source<'_> {
    pub fn len(&self) -> Result<u64> {
        match self {
            Source::Bytes(b) => Ok(b.len() as u64),
            Source::Path(p) => std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| SmgError::InvalidArgument(format!("cannot read {}: {e}", p.display()))),
        }
    }
}

struct MemReader {
    data: *const u8,
    len: usize,
    pos: usize,
}

unsafe extern "C" fn mem_read(opaque: *mut c_void, buf: *mut u8, size: c_int) -> c_int {
    let r = &mut *(opaque as *mut MemReader);
    let remaining = r.len - r.pos;
    if remaining == 0 || size <= 0 {
        return ffi::AVERROR_EOF;
    }
    let n = remaining.min(size as usize);
    ptr::copy_nonoverlapping(r.data.add(r.pos), buf, n);
    r.pos += n;
    n as c_int
}

unsafe extern "C" fn mem_seek(opaque: *mut c_void, offset: i64, whence: c_int) -> i64 {
    let r = &mut *(opaque as *mut MemReader);
    if whence & ffi::AVSEEK_SIZE as c_int != 0 {
        return r.len as i64;
    }
    let base = match whence & !(ffi::AVSEEK_FORCE as c_int) {
        0 => 0i64,
        1 => r.pos as i64,
        2 => r.len as i64,
        _ => return -22,
    };
    let Some(target) = base.checked_add(offset) else { return -22 };
    if target < 0 || target > r.len as i64 {
        return -22;
    }
    r.pos = target as usize;
    target
}

unsafe extern "C" fn interrupt_cb(opaque: *mut c_void) -> c_int {
    let deadline = &*(opaque as *const Instant);
    (Instant::now() > *deadline) as c_int
}

/// An open demuxer plus whatever must outlive it (custom I/O, interrupt deadline).
pub struct OpenInput<'a> {
    input: Option<ff::format::context::Input>,
    avio: *mut ffi::AVIOContext,
    reader: *mut MemReader,
    deadline: *mut Instant,
    _source: std::marker::PhantomData<&'a [u8]>,
}

// SAFETY: the raw pointers are owned exclusively by this value and only used from the
// thread that currently owns it; FFmpeg contexts are not shared.
unsafe impl Send for OpenInput<'_> {}

impl Drop for OpenInput<'_> {
    fn drop(&mut self) {
        // Closing the demuxer first: it may still read through the custom context.
        self.input.take();
        unsafe {
            if !self.avio.is_null() {
                ffi::av_freep(&mut (*self.avio).buffer as *mut *mut u8 as *mut c_void);
                ffi::avio_context_free(&mut self.avio);
            }
            if !self.reader.is_null() {
                drop(Box::from_raw(self.reader));
            }
            if !self.deadline.is_null() {
                drop(Box::from_raw(self.deadline));
            }
        }
    }
}

impl OpenInput<'_> {
    pub fn input(&mut self) -> &mut ff::format::context::Input {
        self.input.as_mut().expect("input is open until drop")
    }
}

static INIT: Once = Once::new();

/// Initializes FFmpeg once per process (quiet logging: malformed inputs are an expected case,
/// and their errors come back typed, not on stderr).
pub(crate) fn init_ffmpeg() {
    INIT.call_once(|| {
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Fatal);
    });
}

pub(crate) fn ff_err(e: ff::Error) -> String {
    e.to_string()
}

/// Opens `source`, enforcing the input-size limit, the format allow-list, the header frame
/// size limits (before FFmpeg decodes anything while probing streams) and the deadline.
pub fn open<'a>(source: &Source<'a>, limits: &Limits, deadline: Instant, formats: &str) -> Result<OpenInput<'a>> {
    init_ffmpeg();
    let size = source.len()?;
    if size == 0 {
        return Err(SmgError::VideoDecode("input is empty (0 bytes)".into()));
    }
    if size > limits.max_input_bytes {
        return crate::error::limit(format!(
            "input is {size} bytes, above max_input_bytes={}",
            limits.max_input_bytes
        ));
    }
    let mut out = OpenInput {
        input: None,
        avio: ptr::null_mut(),
        reader: ptr::null_mut(),
        deadline: Box::into_raw(Box::new(deadline)),
        _source: std::marker::PhantomData,
    };
    unsafe {
        let mut ctx = ffi::avformat_alloc_context();
        if ctx.is_null() {
            return Err(SmgError::VideoDecode("out of memory allocating a demuxer".into()));
        }
        (*ctx).interrupt_callback = ffi::AVIOInterruptCB {
            callback: Some(interrupt_cb),
            opaque: out.deadline as *mut c_void,
        };
        let url = match source {
            Source::Bytes(bytes) => {
                const BUF: usize = 64 * 1024;
                let buf = ffi::av_malloc(BUF) as *mut u8;
                if buf.is_null() {
                    ffi::avformat_free_context(ctx);
                    return Err(SmgError::VideoDecode("out of memory allocating I/O".into()));
                }
                out.reader = Box::into_raw(Box::new(MemReader { data: bytes.as_ptr(), len: bytes.len(), pos: 0 }));
                out.avio = ffi::avio_alloc_context(
                    buf,
                    BUF as c_int,
                    0,
                    out.reader as *mut c_void,
                    Some(mem_read),
                    None,
                    Some(mem_seek),
                );
                if out.avio.is_null() {
                    ffi::av_free(buf as *mut c_void);
                    ffi::avformat_free_context(ctx);
                    return Err(SmgError::VideoDecode("out of memory allocating I/O".into()));
                }
                (*ctx).pb = out.avio;
                (*ctx).flags |= ffi::AVFMT_FLAG_CUSTOM_IO as c_int;
                None
            }
            Source::Path(p) => {
                // "file:" keeps a path like "concat:a|b" or "http://.." from picking a protocol.
                let s = format!("file:{}", p.to_string_lossy());
                match CString::new(s) {
                    Ok(c) => Some(c),
                    Err(_) => {
                        ffi::avformat_free_context(ctx);
                        return crate::error::invalid("path contains a NUL byte");
                    }
                }
            }
        };
        let mut opts: *mut ffi::AVDictionary = ptr::null_mut();
        let set = |d: &mut *mut ffi::AVDictionary, k: &str, v: &str| {
            let (k, v) = (CString::new(k).unwrap(), CString::new(v).unwrap());
            ffi::av_dict_set(d, k.as_ptr(), v.as_ptr(), 0);
        };
        set(&mut opts, "format_whitelist", formats);
        set(&mut opts, "protocol_whitelist", "file");
        let url_ptr = url.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        let ret = ffi::avformat_open_input(&mut ctx, url_ptr, ptr::null(), &mut opts);
        ffi::av_dict_free(&mut opts);
        if ret < 0 {
            // On failure FFmpeg has freed ctx (but not our custom I/O, freed by Drop).
            let err = ff::Error::from(ret);
            if Instant::now() > deadline {
                return crate::error::limit("timed out opening the input");
            }
            return Err(match err {
                ff::Error::Other { errno: 22 } => SmgError::UnsupportedFormat(format!(
                    "input is not a supported format (allowed demuxers: {formats})"
                )),
                ff::Error::InvalidData => {
                    SmgError::VideoDecode("input is not a recognizable media file".into())
                }
                e => SmgError::VideoDecode(format!("cannot open input: {}", ff_err(e))),
            });
        }
        out.input = Some(ff::format::context::Input::wrap(ctx));
        check_header_sizes(ctx, limits)?;
        // Let stream probing decode nothing larger than the frame limit.
        let n = (*ctx).nb_streams as usize;
        let mut stream_opts: Vec<*mut ffi::AVDictionary> = vec![ptr::null_mut(); n];
        for d in stream_opts.iter_mut() {
            set(d, "max_pixels", &limits.max_frame_pixels.min(i32::MAX as u64).to_string());
            set(d, "threads", "1");
        }
        let ret = ffi::avformat_find_stream_info(ctx, stream_opts.as_mut_ptr());
        for d in stream_opts.iter_mut() {
            ffi::av_dict_free(d);
        }
        if Instant::now() > deadline {
            return crate::error::limit("timed out probing the input");
        }
        if ret < 0 {
            return Err(SmgError::VideoDecode(format!(
                "cannot read stream info: {}",
                ff_err(ff::Error::from(ret))
            )));
        }
        check_header_sizes(ctx, limits)?;
    }
    Ok(out)
}

/// Rejects video streams whose declared size breaks the limits, before frames are decoded.
unsafe fn check_header_sizes(ctx: *mut ffi::AVFormatContext, limits: &Limits) -> Result<()> {
    for i in 0..(*ctx).nb_streams as usize {
        let st = *(*ctx).streams.add(i);
        let par = (*st).codecpar;
        if par.is_null() || (*par).codec_type != ffi::AVMediaType::AVMEDIA_TYPE_VIDEO {
            continue;
        }
        let (w, h) = ((*par).width.max(0) as u64, (*par).height.max(0) as u64);
        if w * h > limits.max_frame_pixels {
            return crate::error::limit(format!(
                "video stream declares {w}x{h} frames ({} pixels), above max_frame_pixels={}",
                w * h,
                limits.max_frame_pixels
            ));
        }
    }
    Ok(())
}
