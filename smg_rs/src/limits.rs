//! Resource limits applied to untrusted input. Every check fails fast with
//! `SmgError::LimitExceeded` before the expensive work it guards.

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest accepted input (file size or in-memory buffer), bytes.
    pub max_input_bytes: u64,
    /// Largest decoded frame, in pixels (checked from the header before any frame is
    /// decoded, and handed to the decoder so it refuses bigger frames itself).
    pub max_frame_pixels: u64,
    /// Most frames a video stream may hold (counted while scanning packets).
    pub max_source_frames: u64,
    /// Longest accepted stream, seconds.
    pub max_duration_s: f64,
    /// Largest long-side / short-side ratio.
    pub max_aspect_ratio: f64,
    /// Smallest accepted frame side, pixels (a preset raises it to its patch size).
    pub min_side: u32,
    /// Largest output buffer (decoded uint8 frames or features), bytes.
    pub max_output_bytes: u64,
    /// Wall-clock budget for one call, seconds (checked between packets and inside I/O).
    pub timeout_s: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_input_bytes: 2 << 30,
            max_frame_pixels: 7680 * 4320,
            max_source_frames: 16_384,
            max_duration_s: 4.0 * 3600.0,
            max_aspect_ratio: 200.0,
            min_side: 1,
            max_output_bytes: 4 << 30,
            timeout_s: 600.0,
        }
    }
}

impl Limits {
    /// Checks frame dimensions against the pixel, aspect and side limits.
    pub fn check_frame_size(&self, width: u32, height: u32) -> crate::error::Result<()> {
        if width == 0 || height == 0 {
            return Err(crate::error::SmgError::VideoDecode(format!(
                "video stream has no valid frame size ({width}x{height})"
            )));
        }
        let pixels = width as u64 * height as u64;
        if pixels > self.max_frame_pixels {
            return crate::error::limit(format!(
                "frame {width}x{height} has {pixels} pixels, above max_frame_pixels={}",
                self.max_frame_pixels
            ));
        }
        let (long, short) = (width.max(height) as f64, width.min(height) as f64);
        if long / short > self.max_aspect_ratio {
            return crate::error::limit(format!(
                "frame {width}x{height} has aspect ratio {:.1}, above max_aspect_ratio={}",
                long / short,
                self.max_aspect_ratio
            ));
        }
        if width.min(height) < self.min_side {
            return crate::error::limit(format!(
                "frame {width}x{height} is smaller than the minimum side {} (one patch)",
                self.min_side
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::SmgError;

    #[test]
    fn frame_size_limits() {
        let l = Limits { min_side: 14, ..Limits::default() };
        assert!(l.check_frame_size(203, 117).is_ok());
        assert!(matches!(l.check_frame_size(8192, 8192), Err(SmgError::LimitExceeded(_))));
        assert!(matches!(l.check_frame_size(4020, 20), Err(SmgError::LimitExceeded(_))));
        assert!(l.check_frame_size(4000, 20).is_ok());
        assert!(matches!(l.check_frame_size(13, 40), Err(SmgError::LimitExceeded(_))));
        assert!(matches!(l.check_frame_size(0, 40), Err(SmgError::VideoDecode(_))));
    }
}
