//! PyO3 layer: argument conversion, GIL release, zero-copy numpy output, typed exceptions.
use crate::avio::Source;
use crate::decode::DecoderKind;
use crate::error::SmgError as CoreError;
use crate::limits::Limits;
use crate::pipeline::{self, Features, FrameSelection, VideoRequest};
use crate::presets::{Preset, SizeOverrides};
use crate::bufcache::{self, Buffer, Cacheable};
use numpy::ndarray::{Array4, ArrayView2};
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use std::path::PathBuf;

create_exception!(smg_rs, SmgError, PyValueError, "Base class of every smg_rs error (a ValueError).");
create_exception!(smg_rs, VideoDecodeError, SmgError, "The input could not be demuxed or decoded (corrupt, truncated, empty), or a requested frame is damaged (smg_rs/README.md, Damaged streams).");
create_exception!(smg_rs, UnsupportedFormatError, SmgError, "Container, codec or stream kind outside the allow-list, or not a video.");
create_exception!(smg_rs, LimitExceededError, SmgError, "A documented resource limit was hit (size, pixels, frames, duration, aspect, time).");
create_exception!(smg_rs, InvalidArgumentError, SmgError, "An argument is out of range or inconsistent.");
create_exception!(smg_rs, HardwareUnavailableError, SmgError, "decoder=\"nvdec\" cannot run here: no CUDA driver or NVDEC, no NVDEC decoder for the codec in this build, or the GPU refused the stream. Software decoding still works.");

fn to_py(e: CoreError) -> PyErr {
    match e {
        CoreError::VideoDecode(m) => VideoDecodeError::new_err(m),
        CoreError::UnsupportedFormat(m) => UnsupportedFormatError::new_err(m),
        CoreError::LimitExceeded(m) => LimitExceededError::new_err(m),
        CoreError::InvalidArgument(m) => InvalidArgumentError::new_err(m),
        CoreError::HardwareUnavailable(m) => HardwareUnavailableError::new_err(m),
    }
}

/// Input bytes held for the duration of a call: borrowed from `bytes`, copied otherwise.
enum Input<'py> {
    Path(PathBuf),
    Borrowed(Bound<'py, PyBytes>),
    Owned(Vec<u8>),
}

impl<'py> Input<'py> {
    fn extract(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(b) = obj.downcast::<PyBytes>() {
            return Ok(Input::Borrowed(b.clone()));
        }
        if obj.downcast::<PyMemoryView>().is_ok() || obj.downcast::<PyByteArray>().is_ok() {
            // The limited API has no buffer protocol before 3.11: take one copy.
            let b = obj.py().get_type::<PyBytes>().call1((obj,))?;
            return Ok(Input::Owned(b.downcast::<PyBytes>()?.as_bytes().to_vec()));
        }
        if let Ok(p) = obj.extract::<PathBuf>() {
            return Ok(Input::Path(p));
        }
        Err(InvalidArgumentError::new_err(
            "source must be a path (str or os.PathLike), bytes, bytearray or memoryview",
        ))
    }

    fn source(&self) -> Source<'_> {
        match self {
            Input::Path(p) => Source::Path(p.as_path()),
            Input::Borrowed(b) => Source::Bytes(b.as_bytes()),
            Input::Owned(v) => Source::Bytes(v.as_slice()),
        }
    }
}

// SAFETY: the `Borrowed` variant only hands out the immutable contents of a `bytes` object
// that the caller keeps alive; the GIL-free closure never touches the Python object itself.
struct SendSource<'a>(Source<'a>);
unsafe impl Send for SendSource<'_> {}

#[allow(clippy::too_many_arguments)]
fn limits_from(
    max_input_bytes: Option<u64>,
    max_frame_pixels: Option<u64>,
    max_source_frames: Option<u64>,
    max_duration_s: Option<f64>,
    timeout_s: Option<f64>,
) -> PyResult<Limits> {
    let d = Limits::default();
    let l = Limits {
        max_input_bytes: max_input_bytes.unwrap_or(d.max_input_bytes),
        max_frame_pixels: max_frame_pixels.unwrap_or(d.max_frame_pixels),
        max_source_frames: max_source_frames.unwrap_or(d.max_source_frames),
        max_duration_s: max_duration_s.unwrap_or(d.max_duration_s),
        timeout_s: timeout_s.unwrap_or(d.timeout_s),
        ..d
    };
    if !(l.timeout_s > 0.0) || !(l.max_duration_s > 0.0) {
        return Err(InvalidArgumentError::new_err("timeout_s and max_duration_s must be > 0"));
    }
    Ok(l)
}

/// Patch features of one video (or image), ready for the vision encoder.
#[pyclass(frozen, module = "smg_rs")]
pub struct VideoFeatures {
    /// `(grid_t*grid_h*grid_w, C*temporal_patch*patch*patch)` float32 or float16.
    #[pyo3(get)]
    pixel_values: PyObject,
    /// `(grid_t, grid_h, grid_w)`.
    #[pyo3(get)]
    grid_thw: (usize, usize, usize),
    /// Source frame index of each sampled frame (before temporal padding).
    #[pyo3(get)]
    frame_indices: Vec<usize>,
    /// Presentation time of each sampled frame, seconds.
    #[pyo3(get)]
    timestamps: Vec<f64>,
    /// Average frame rate (frames / scanned duration).
    #[pyo3(get)]
    source_fps: f64,
    /// Scanned stream duration, seconds.
    #[pyo3(get)]
    duration: f64,
    #[pyo3(get)]
    num_source_frames: usize,
}

#[pymethods]
impl VideoFeatures {
    fn __repr__(&self) -> String {
        format!(
            "VideoFeatures(grid_thw={:?}, frames={}, source_fps={:.3}, duration={:.3})",
            self.grid_thw,
            self.frame_indices.len(),
            self.source_fps,
            self.duration
        )
    }
}

/// Decoded RGB frames of one video.
#[pyclass(frozen, module = "smg_rs")]
pub struct DecodedFrames {
    /// `(n, height, width, 3)` uint8, display orientation.
    #[pyo3(get)]
    frames: PyObject,
    #[pyo3(get)]
    frame_indices: Vec<usize>,
    #[pyo3(get)]
    timestamps: Vec<f64>,
    #[pyo3(get)]
    source_fps: f64,
    #[pyo3(get)]
    duration: f64,
    #[pyo3(get)]
    num_source_frames: usize,
}

#[pymethods]
impl DecodedFrames {
    fn __repr__(&self) -> String {
        format!("DecodedFrames(n={}, source_fps={:.3})", self.frame_indices.len(), self.source_fps)
    }
}

/// The owner (NumPy `base`) of a features array's memory: when the array and every view of it
/// are gone, Python drops this, and the buffer goes to the buffer cache (bufcache.rs) for a later
/// call of the same output size instead of being unmapped.
#[pyclass(frozen, module = "smg_rs")]
struct FeatureBuffer(Option<Buffer>);

impl Drop for FeatureBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            bufcache::global().put_buffer(b);
        }
    }
}

fn features_to_py<T: numpy::Element + crate::patchify::OutElem + Cacheable>(py: Python<'_>, f: Features<T>) -> PyResult<VideoFeatures> {
    let (rows, cols) = (f.rows, f.cols);
    if f.pixel_values.len() != rows * cols {
        return Err(InvalidArgumentError::new_err("features do not match their shape"));
    }
    let ptr = f.pixel_values.as_ptr();
    // the Vec's heap memory stays where it is when the Vec moves into its owner
    let owner = Bound::new(py, FeatureBuffer(Some(T::wrap(f.pixel_values))))?;
    // SAFETY: `ptr` points at rows * cols initialized elements owned by `owner`, which the
    // array keeps alive (its base) and nothing else touches until `owner` is dropped.
    let arr = unsafe {
        let view = ArrayView2::from_shape_ptr((rows, cols), ptr);
        PyArray2::<T>::borrow_from_array(&view, owner.into_any())
    };
    Ok(VideoFeatures {
        pixel_values: arr.into_any().unbind(),
        grid_thw: f.grid_thw,
        frame_indices: f.frame_indices,
        timestamps: f.timestamps,
        source_fps: f.source_fps,
        duration: f.duration,
        num_source_frames: f.num_source_frames,
    })
}

/// (buffers kept, bytes kept, cap in bytes) of the output buffer cache (`SMG_RS_BUFFER_CACHE_MB`).
#[pyfunction]
fn buffer_cache_stats() -> (usize, usize, usize) {
    let c = bufcache::global();
    let (n, bytes) = c.stats();
    (n, bytes, c.cap_bytes())
}

/// Frees the buffers the output buffer cache keeps.
#[pyfunction]
fn clear_buffer_cache() {
    bufcache::global().clear()
}

#[derive(Clone, Copy)]
enum DType {
    F32,
    F16,
}

fn parse_dtype(s: &str) -> PyResult<DType> {
    match s {
        "float32" | "f32" => Ok(DType::F32),
        "float16" | "f16" => Ok(DType::F16),
        other => Err(InvalidArgumentError::new_err(format!("dtype must be 'float32' or 'float16', got {other:?}"))),
    }
}

/// Decode a video, sample frames, resize, normalize and patchify it for `preset`.
///
/// `source` is a path (str / os.PathLike), `bytes` (read in place), or a `bytearray` /
/// `memoryview` (copied once). Nothing is written to disk.
///
/// Preset "minimax_m3" reproduces SGLang's MiniMax-M3 VL path: constant-rate sampling at
/// `fps` (default 1.0, last frame always kept, thinned to `max_frames`), long side capped at
/// `max_long_side` (default: isqrt(max_pixels) rounded down to 28) and rounded up to 28, the
/// HF processor's smart_resize (min 3136, `max_pixels` default 602112 pixels), antialiased
/// bicubic on float frames, 1/255 rescale, CLIP mean/std, last frame repeated to an even
/// count, and the HF patch layout `(t, h/2, w/2, 2, 2) x (C, 2, 14, 14)`.
///
/// Limits (defaults): max_input_bytes 2 GiB, max_frame_pixels 7680*4320, max_source_frames
/// 16384, max_duration_s 14400, timeout_s 600, aspect ratio <= 200, frame sides >= one
/// patch, output <= 4 GiB. Violations raise LimitExceededError before the costly work.
///
/// `threads` bounds the decoder threads and the resize workers (default min(cores, 8)).
/// `decoder="nvdec"` (opt-in) decodes on the GPU's NVDEC engine instead of the CPU and raises
/// HardwareUnavailableError where it cannot (smg_rs/README.md, "NVDEC").
/// The GIL is released while working.
#[pyfunction]
#[pyo3(signature = (source, *, preset="minimax_m3", fps=None, max_frames=None, max_pixels=None, max_long_side=None, dtype="float32", threads=None, max_input_bytes=None, max_frame_pixels=None, max_source_frames=None, max_duration_s=None, timeout_s=None, decoder="software"))]
#[allow(clippy::too_many_arguments)]
fn preprocess_video(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    preset: &str,
    fps: Option<f64>,
    max_frames: Option<usize>,
    max_pixels: Option<u64>,
    max_long_side: Option<u32>,
    dtype: &str,
    threads: Option<usize>,
    max_input_bytes: Option<u64>,
    max_frame_pixels: Option<u64>,
    max_source_frames: Option<u64>,
    max_duration_s: Option<f64>,
    timeout_s: Option<f64>,
    decoder: &str,
) -> PyResult<VideoFeatures> {
    let preset = Preset::by_name(preset).map_err(to_py)?;
    let dtype = parse_dtype(dtype)?;
    let decoder = DecoderKind::parse(decoder).map_err(to_py)?;
    let input = Input::extract(source)?;
    let req = VideoRequest {
        fps,
        max_frames,
        size: SizeOverrides { max_pixels, max_long_side },
        threads,
        limits: limits_from(max_input_bytes, max_frame_pixels, max_source_frames, max_duration_s, timeout_s)?,
        decoder,
    };
    let src = SendSource(input.source());
    match dtype {
        DType::F32 => {
            let f = py.allow_threads(move || { let s = src; pipeline::preprocess_video::<f32>(s.0, &preset, &req) }).map_err(to_py)?;
            features_to_py(py, f)
        }
        DType::F16 => {
            let f = py.allow_threads(move || { let s = src; pipeline::preprocess_video::<half::f16>(s.0, &preset, &req) }).map_err(to_py)?;
            features_to_py(py, f)
        }
    }
}

/// Decode frames of a video to uint8 RGB, shape `(n, height, width, 3)`, display orientation.
///
/// Select with `frame_indices` (any order, repeats allowed), or `fps` (MiniMax-M3
/// constant-rate sampling, thinned to `max_frames`); default: every frame, evenly thinned to
/// `max_frames`. Same sources, limits and `decoder` choice as `preprocess_video`.
#[pyfunction]
#[pyo3(signature = (source, *, fps=None, max_frames=None, frame_indices=None, threads=None, max_input_bytes=None, max_frame_pixels=None, max_source_frames=None, max_duration_s=None, timeout_s=None, decoder="software"))]
#[allow(clippy::too_many_arguments)]
fn decode_frames(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    fps: Option<f64>,
    max_frames: Option<usize>,
    frame_indices: Option<Vec<i64>>,
    threads: Option<usize>,
    max_input_bytes: Option<u64>,
    max_frame_pixels: Option<u64>,
    max_source_frames: Option<u64>,
    max_duration_s: Option<f64>,
    timeout_s: Option<f64>,
    decoder: &str,
) -> PyResult<DecodedFrames> {
    let kind = DecoderKind::parse(decoder).map_err(to_py)?;
    let input = Input::extract(source)?;
    let frame_indices = match frame_indices {
        Some(v) => {
            if v.iter().any(|&i| i < 0) {
                return Err(InvalidArgumentError::new_err("frame_indices must be non-negative"));
            }
            Some(v.into_iter().map(|i| i as usize).collect())
        }
        None => None,
    };
    let sel = FrameSelection { fps, max_frames, frame_indices };
    let limits = limits_from(max_input_bytes, max_frame_pixels, max_source_frames, max_duration_s, timeout_s)?;
    let src = SendSource(input.source());
    let d = py
        .allow_threads(move || { let s = src; pipeline::decode_frames(s.0, &sel, threads, &limits, kind) })
        .map_err(to_py)?;
    let arr = Array4::from_shape_vec((d.count, d.height as usize, d.width as usize, 3), d.frames)
        .map_err(|e| InvalidArgumentError::new_err(e.to_string()))?
        .into_pyarray(py);
    Ok(DecodedFrames {
        frames: arr.into_any().unbind(),
        frame_indices: d.frame_indices,
        timestamps: d.timestamps,
        source_fps: d.source_fps,
        duration: d.duration,
        num_source_frames: d.num_source_frames,
    })
}

/// Patch features of one RGB image (numpy uint8 `(H, W, 3)`, or encoded PNG / JPEG / WebP /
/// BMP bytes decoded with FFmpeg), as the preset's HF image
/// processor makes them (uint8 antialiased bicubic resize, single frame repeated to one
/// temporal group). `max_pixels` overrides the image pixel budget.
#[pyfunction]
#[pyo3(signature = (image, *, preset="minimax_m3", max_pixels=None, dtype="float32"))]
fn preprocess_image(
    py: Python<'_>,
    image: &Bound<'_, PyAny>,
    preset: &str,
    max_pixels: Option<u64>,
    dtype: &str,
) -> PyResult<VideoFeatures> {
    let preset = Preset::by_name(preset).map_err(to_py)?;
    let dtype = parse_dtype(dtype)?;
    let limits = Limits::default();
    if image.downcast::<PyBytes>().is_ok() || image.downcast::<PyByteArray>().is_ok() || image.downcast::<PyMemoryView>().is_ok() {
        let input = Input::extract(image)?;
        let src = SendSource(input.source());
        return match dtype {
            DType::F32 => {
                let f = py.allow_threads(move || { let s = src; match s.0 { Source::Bytes(b) => pipeline::preprocess_image_bytes::<f32>(b, &preset, max_pixels, &limits), Source::Path(_) => unreachable!() } }).map_err(to_py)?;
                features_to_py(py, f)
            }
            DType::F16 => {
                let f = py.allow_threads(move || { let s = src; match s.0 { Source::Bytes(b) => pipeline::preprocess_image_bytes::<half::f16>(b, &preset, max_pixels, &limits), Source::Path(_) => unreachable!() } }).map_err(to_py)?;
                features_to_py(py, f)
            }
        };
    }
    let arr: PyReadonlyArray3<'_, u8> = image
        .extract()
        .map_err(|_| InvalidArgumentError::new_err("image must be a uint8 numpy array of shape (H, W, 3) or encoded image bytes"))?;
    let shape = arr.shape().to_vec();
    if shape[2] != 3 {
        return Err(InvalidArgumentError::new_err(format!("image must have 3 channels, got shape {shape:?}")));
    }
    let data: Vec<u8> = match arr.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => arr.as_array().iter().copied().collect(),
    };
    let (h, w) = (shape[0] as u32, shape[1] as u32);
    match dtype {
        DType::F32 => {
            let f = py.allow_threads(|| pipeline::preprocess_image::<f32>(&data, h, w, &preset, max_pixels, &limits)).map_err(to_py)?;
            features_to_py(py, f)
        }
        DType::F16 => {
            let f = py.allow_threads(|| pipeline::preprocess_image::<half::f16>(&data, h, w, &preset, max_pixels, &limits)).map_err(to_py)?;
            features_to_py(py, f)
        }
    }
}

#[pymodule]
fn smg_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(preprocess_video, m)?)?;
    m.add_function(wrap_pyfunction!(decode_frames, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess_image, m)?)?;
    m.add_class::<VideoFeatures>()?;
    m.add_class::<DecodedFrames>()?;
    m.add_function(wrap_pyfunction!(buffer_cache_stats, m)?)?;
    m.add_function(wrap_pyfunction!(clear_buffer_cache, m)?)?;
    m.add("SmgError", py.get_type::<SmgError>())?;
    m.add("VideoDecodeError", py.get_type::<VideoDecodeError>())?;
    m.add("UnsupportedFormatError", py.get_type::<UnsupportedFormatError>())?;
    m.add("LimitExceededError", py.get_type::<LimitExceededError>())?;
    m.add("InvalidArgumentError", py.get_type::<InvalidArgumentError>())?;
    m.add("HardwareUnavailableError", py.get_type::<HardwareUnavailableError>())?;
    m.add(
        "__all__",
        vec![
            "__version__",
            "preprocess_video",
            "decode_frames",
            "preprocess_image",
            "VideoFeatures",
            "DecodedFrames",
            "buffer_cache_stats",
            "clear_buffer_cache",
            "SmgError",
            "VideoDecodeError",
            "UnsupportedFormatError",
            "LimitExceededError",
            "InvalidArgumentError",
            "HardwareUnavailableError",
        ],
    )?;
    Ok(())
}
