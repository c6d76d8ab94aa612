//! `smg_rs`: video preprocessing for multimodal LLM serving.
//!
//! The pure-Rust core (decode, sample, resize, normalize, patchify) builds and tests without
//! Python; the `extension-module` feature adds the thin PyO3 layer in `python.rs`.
pub mod avio;
pub mod bufcache;
pub mod decode;
pub mod error;
mod hpass;
pub mod limits;
pub mod normalize;
pub mod patchify;
pub mod pipeline;
mod pool;
pub mod presets;
pub mod resize;
pub mod sample;

#[cfg(feature = "extension-module")]
mod python;

pub use error::{Result, SmgError};
