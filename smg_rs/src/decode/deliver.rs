//! Handing decoded frames to the caller: which wanted indices a decoded frame serves, RGB
//! conversion of only those, and the damaged-stream policy (see smg_rs/README.md): a wanted
//! frame is delivered only if the decoder produced it intact.
use super::convert::Converter;
use super::{RgbFrame, VideoInfo};
use crate::error::{Result, SmgError};
use ffmpeg_next as ff;
use ff::ffi;
use std::collections::{BTreeMap, BTreeSet};

/// `AV_FRAME_FLAG_CORRUPT`: the decoder says the frame may be corrupt.
const FRAME_FLAG_CORRUPT: i32 = 1;

/// A few damaged packets are tolerated while nothing wanted depends on them; a mostly broken
/// stream is not.
pub(super) fn check_decode_errors(errors: usize, packets: usize) -> Result<()> {
    if errors > 8 && errors * 4 > packets {
        return Err(SmgError::VideoDecode(format!("stream is damaged: {errors} decode errors in {packets} packets")));
    }
    Ok(())
}

/// A reference to the most recent decoded frame.
pub(super) struct LastFrame(*mut ffi::AVFrame);

impl LastFrame {
    fn new() -> Self {
        Self(unsafe { ffi::av_frame_alloc() })
    }
    fn keep(&mut self, frame: &ff::frame::Video) {
        unsafe {
            ffi::av_frame_unref(self.0);
            if ffi::av_frame_ref(self.0, frame.as_ptr()) < 0 {
                ffi::av_frame_unref(self.0);
            }
        }
    }
    pub(super) fn is_set(&self) -> bool {
        !self.0.is_null() && unsafe { (*self.0).width > 0 && !(*self.0).data[0].is_null() }
    }
}

impl Drop for LastFrame {
    fn drop(&mut self) {
        unsafe { ffi::av_frame_free(&mut self.0) };
    }
}

/// Damage seen in the current pass (since its start or its last seek).
/// Everything here is read off the decoder's output (missing frames, frame flags), which is the
/// same whatever the thread count or the path (sequential, seeking, parallel) that fed it.
#[derive(Default)]
struct Damage {
    /// Presentation index the next decoded frame should have (timestamped streams).
    next_expected: usize,
    /// Errors the decoder reported (rejected packets, failed receives).
    errors: usize,
    /// The first damaged frame (flagged, or lost) that later frames may be predicted from.
    tainted: Option<usize>,
    /// Frames whose packets were sent with non-reference pictures discarded: they may never
    /// come out, by design.
    discarded: BTreeSet<usize>,
}

pub(super) struct DeliverState<'s> {
    pub(super) wanted: BTreeMap<usize, Vec<usize>>,
    frame_pts: Option<&'s [i64]>,
    counter: usize,
    info: &'s VideoInfo,
    converter: Converter,
    /// The most recent decoded frame, converted only if it is needed as a stand-in for frames
    /// at the end that the decoder never produced without reporting damage.
    pub(super) last: LastFrame,
    /// Decoder errors over the whole call (the damaged-stream threshold).
    pub(super) decode_errors: usize,
    damage: Damage,
}

impl<'s> DeliverState<'s> {
    pub(super) fn new(
        wanted: BTreeMap<usize, Vec<usize>>,
        frame_pts: Option<&'s [i64]>,
        info: &'s VideoInfo,
        decode_errors: usize,
    ) -> Self {
        Self {
            wanted,
            frame_pts,
            counter: 0,
            info,
            converter: Converter::default(),
            last: LastFrame::new(),
            decode_errors,
            damage: Damage::default(),
        }
    }

    pub(super) fn check_errors(&self, packets: usize) -> Result<()> {
        check_decode_errors(self.decode_errors, packets)
    }

    /// A new pass from the start of the stream.
    pub(super) fn begin_pass(&mut self) {
        self.counter = 0;
        self.damage = Damage::default();
    }

    /// The decoder was flushed and the demuxer moved to the keyframe at `key_index`.
    pub(super) fn after_seek(&mut self, key_index: usize) {
        self.damage.next_expected = key_index;
        self.damage.errors = 0;
        self.damage.tainted = None;
    }

    /// The decoder rejected a packet or failed to produce a frame.
    pub(super) fn decoder_error(&mut self) {
        self.decode_errors += 1;
        self.damage.errors += 1;
    }

    /// The packet of frame `index` was sent with non-reference pictures discarded.
    pub(super) fn discarding(&mut self, index: usize) {
        self.damage.discarded.insert(index);
    }

    fn damaged(&self, index: usize, why: &str) -> SmgError {
        let t = self.info.frame_times.get(index).copied().unwrap_or(f64::NAN);
        SmgError::VideoDecode(format!("stream is damaged: frame {index} (t={t:.3} s) {why}"))
    }

    fn deliver(
        &mut self,
        raw: *const ffi::AVFrame,
        covered: usize,
        sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>,
    ) -> Result<()> {
        let ready: Vec<usize> = self.wanted.range(..=covered).map(|(&i, _)| i).collect();
        if ready.is_empty() {
            return Ok(());
        }
        let (w, h, data) = self.converter.convert(raw, self.info)?;
        let total: usize = ready.iter().map(|i| self.wanted[i].len()).sum();
        let mut data = Some(data);
        let mut served = 0;
        for index in ready {
            let slots = self.wanted.remove(&index).unwrap_or_default();
            for slot in slots {
                served += 1;
                let bytes = if served == total { data.take().unwrap() } else { data.as_ref().unwrap().clone() };
                let pts_seconds = self.info.frame_times[index];
                sink(slot, RgbFrame { width: w, height: h, data: bytes, index, pts_seconds })?;
            }
        }
        Ok(())
    }

    /// One decoded frame: updates the damage record and delivers the wanted indices it serves,
    /// or fails when one of them was lost or would come from damaged pictures.
    pub(super) fn on_frame(&mut self, frame: &ff::frame::Video, sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>) -> Result<()> {
        let position = self.counter;
        self.counter += 1;
        // The largest frame index this decoded frame stands for: by timestamp when the
        // scan found one for every packet, else by output position.
        let (covered, exact) = match (self.frame_pts, frame.timestamp()) {
            (Some(pts), Some(p)) => match pts.partition_point(|&q| q <= p) {
                0 => return Ok(()),
                k => (k - 1, pts[k - 1] == p),
            },
            _ => (position, false),
        };
        let (flags, error_flags) = unsafe { ((*frame.as_ptr()).flags, (*frame.as_ptr()).decode_error_flags) };
        let flagged = flags & FRAME_FLAG_CORRUPT != 0 || error_flags != 0;
        // Frames between the one expected and this one never came out: lost, when the decoder
        // has reported errors (rather than left out a frame it had no picture for).
        let mut first_lost = None;
        if exact {
            let expected = self.damage.next_expected;
            if covered < expected {
                // shown before the frame a seek landed on: never delivered
                if self.frame_pts.is_some() && self.wanted.range(..=covered).next().is_none() {
                    return Ok(());
                }
            } else {
                if self.damage.errors > 0 {
                    first_lost = (expected..covered).find(|i| !self.damage.discarded.contains(i));
                }
                self.damage.next_expected = covered + 1;
            }
        }
        if let Some(lost) = first_lost {
            self.damage.tainted.get_or_insert(lost);
            if let Some((&i, _)) = self.wanted.range(lost..covered).find(|(i, _)| !self.damage.discarded.contains(i)) {
                return Err(self.damaged(i, "was lost: the decoder rejected its data"));
            }
        }
        if flagged {
            self.damage.tainted.get_or_insert(covered);
        } else if frame.is_key() {
            // An intact keyframe: nothing after it depends on what came before. (The error
            // count stays: with frame threads or reordering, an error may be reported before
            // the keyframe comes out although it belongs to a packet after it.)
            self.damage.tainted = None;
        }
        if let Some(t) = self.damage.tainted {
            if let Some((&i, _)) = self.wanted.range(..=covered).next() {
                let why = if i == t { "is damaged (the decoder concealed errors in it)".to_string() } else { format!("depends on damaged frame {t}") };
                return Err(self.damaged(i, &why));
            }
        }
        self.last.keep(frame);
        self.deliver(unsafe { frame.as_ptr() }, covered, sink)
    }

    /// At the end of the stream: the wanted indices the decoder never produced. Lost data
    /// (the decoder reported errors in this pass) fails the call; otherwise
    /// they take the last decoded frame.
    pub(super) fn finish(&mut self, sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>) -> Result<()> {
        let Some((&first, _)) = self.wanted.iter().next() else { return Ok(()) };
        if self.damage.errors > 0 || self.damage.tainted.is_some() {
            return Err(self.damaged(first, "was lost: the decoder rejected the end of the stream"));
        }
        if !self.last.is_set() {
            return Err(SmgError::VideoDecode("no frame could be decoded".into()));
        }
        let raw = self.last.0 as *const ffi::AVFrame;
        self.deliver(raw, usize::MAX, sink)
    }
}
