//! Error type of the core. Each variant maps to one Python exception class in `python.rs`.
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum SmgError {
    /// The bytes are a supported container but could not be demuxed or decoded.
    #[error("{0}")]
    VideoDecode(String),
    /// Container, codec or stream kind outside the allow-list (or not a video at all).
    #[error("{0}")]
    UnsupportedFormat(String),
    /// A documented resource limit (size, pixels, frames, duration, aspect, time) was hit.
    #[error("{0}")]
    LimitExceeded(String),
    /// A caller argument is out of range or inconsistent.
    #[error("{0}")]
    InvalidArgument(String),
    /// The hardware decoder asked for (`decoder="nvdec"`) cannot run here: no CUDA driver or
    /// NVDEC, no NVDEC decoder for the codec in this build, or the GPU refused the stream.
    #[error("{0}")]
    HardwareUnavailable(String),
}

pub type Result<T> = std::result::Result<T, SmgError>;

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(SmgError::InvalidArgument(msg.into()))
}

pub(crate) fn limit<T>(msg: impl Into<String>) -> Result<T> {
    Err(SmgError::LimitExceeded(msg.into()))
}
