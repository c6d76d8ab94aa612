//! One decode pass over a freshly opened input: demux, (seek,) send packets, take frames,
//! deliver the wanted ones; plus the non-reference picture skipper.
use super::deliver::DeliverState;
use super::scan::read_packet;
use super::seek::{accept_landing, sequential_decode_forced, Seeker};
use super::{check_deadline, stream, DecodeStats, DecoderKind, RgbFrame, VideoDecoder};
use crate::avio::{self, ff_err};
use crate::error::{Result, SmgError};
use ffmpeg_next as ff;
use ff::ffi;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why [`VideoDecoder::drain`] stopped taking frames from the decoder.
enum Drained {
    /// The decoder wants more input (or is at its end).
    NeedsInput,
    /// Every wanted frame has been delivered.
    AllServed,
    /// A frame showed that the last seek did not land on its keyframe.
    SeekMissed,
}

pub(super) enum Pass {
    Finished,
    /// A seek failed or landed elsewhere than on its keyframe.
    SeekMissed,
    /// A parallel worker was told to stop.
    Stopped,
}

/// How a decode pass runs: FFmpeg threads of its decoder, and the flag that stops a parallel worker.
#[derive(Clone, Copy)]
pub(super) struct PassRun<'s> {
    pub decoder_threads: usize,
    pub stop: Option<&'s AtomicBool>,
}

/// Lets the decoder drop non-reference pictures nobody asked for. A non-reference picture is
/// never used to predict another, so discarding it leaves every other decoded picture
/// bit-identical; it is only discarded when its own packet (identified by its unique
/// presentation timestamp) is not a requested frame, so no requested frame can go missing.
pub(super) struct NonRefSkipper<'s> {
    frame_pts: &'s [i64],
    /// Every index the call wants (parallel workers); None: the frames still wanted.
    keep: Option<&'s BTreeMap<usize, Vec<usize>>>,
}

impl<'s> NonRefSkipper<'s> {
    pub(super) fn new(
        codec_id: ffi::AVCodecID,
        frame_pts: Option<&'s [i64]>,
        keep: Option<&'s BTreeMap<usize, Vec<usize>>>,
    ) -> Option<Self> {
        if sequential_decode_forced() {
            return None;
        }
        // Codecs whose FFmpeg decoders honour skip_frame=NONREF by dropping exactly the
        // pictures no other picture references (H.264 nal_ref_idc == 0, HEVC sub-layer non-refs).
        let supported = matches!(codec_id, ffi::AVCodecID::AV_CODEC_ID_H264 | ffi::AVCodecID::AV_CODEC_ID_HEVC);
        let frame_pts = frame_pts?;
        // Packet -> frame index must be one-to-one, else a dropped packet could be a wanted frame.
        let unique = frame_pts.windows(2).all(|w| w[0] < w[1]);
        (supported && unique).then_some(Self { frame_pts, keep })
    }

    /// The frame index of a packet whose non-reference picture may be dropped, if it may.
    fn discardable(&self, pts: Option<i64>, wanted: &BTreeMap<usize, Vec<usize>>) -> Option<usize> {
        let index = self.frame_pts.binary_search(&pts?).ok()?;
        (!self.keep.unwrap_or(wanted).contains_key(&index)).then_some(index)
    }
}

impl VideoDecoder<'_> {
    /// Takes every frame the decoder has ready, checks it against a pending seek and delivers
    /// the wanted ones; `each_frame_deadline` also checks the deadline per frame (the end-of-stream
    /// drain, where no packet loop does).
    fn drain(
        &self,
        decoder: &mut ff::decoder::Video,
        frame: &mut ff::frame::Video,
        state: &mut DeliverState<'_>,
        mut seeker: Option<&mut Seeker<'_>>,
        sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>,
        each_frame_deadline: bool,
    ) -> Result<Drained> {
        loop {
            if each_frame_deadline {
                check_deadline(self.deadline)?;
            }
            match decoder.receive_frame(frame) {
                Ok(()) => {
                    if !accept_landing(seeker.as_deref_mut(), frame) {
                        return Ok(Drained::SeekMissed);
                    }
                    state.on_frame(frame, sink)?;
                    if state.wanted.is_empty() {
                        return Ok(Drained::AllServed);
                    }
                }
                Err(ff::Error::Other { errno: 11 }) | Err(ff::Error::Eof) => return Ok(Drained::NeedsInput),
                Err(_) => {
                    state.decoder_error();
                    return Ok(Drained::NeedsInput);
                }
            }
        }
    }

    /// One pass over a freshly opened input: demux, (seek,) decode and deliver until every
    /// wanted frame is served or the stream ends.
    pub(super) fn decode_pass(
        &self,
        state: &mut DeliverState<'_>,
        skipper: Option<&NonRefSkipper<'_>>,
        mut seeker: Option<&mut Seeker<'_>>,
        stats: &mut DecodeStats,
        sink: &mut impl FnMut(usize, RgbFrame) -> Result<()>,
        run: PassRun<'_>,
    ) -> Result<Pass> {
        let limits = &self.opts.limits;
        let mut input = avio::open(&self.source, limits, self.deadline, self.opts.formats())?;
        let mut decoder = {
            let stream = input
                .input()
                .stream(self.stream_index)
                .ok_or_else(|| SmgError::VideoDecode("video stream vanished on reopen".into()))?;
            let mut ctx = ff::codec::context::Context::from_parameters(stream.parameters())
                .map_err(|e| SmgError::VideoDecode(format!("cannot set up decoder: {}", ff_err(e))))?;
            unsafe {
                let raw = ctx.as_mut_ptr();
                (*raw).thread_count = run.decoder_threads.clamp(1, 16) as i32;
                (*raw).thread_type = (ffi::FF_THREAD_FRAME | ffi::FF_THREAD_SLICE) as i32;
                (*raw).max_pixels = limits.max_frame_pixels.min(i32::MAX as u64) as i64;
                (*raw).pkt_timebase = (*stream.as_ptr()).time_base;
            }
            match self.opts.decoder {
                DecoderKind::Software => ctx
                    .decoder()
                    .video()
                    .map_err(|e| SmgError::VideoDecode(format!("cannot open decoder: {}", ff_err(e))))?,
                DecoderKind::Nvdec => {
                    let (name, codec) = stream::cuvid_decoder(&stream.parameters())?;
                    ctx.decoder().open_as(codec).and_then(|o| o.video()).map_err(|e| {
                        SmgError::HardwareUnavailable(format!(
                            "NVDEC: cannot open {name} ({}); needs an NVIDIA driver with libcuda and libnvcuvid \
                             (containers: NVIDIA_DRIVER_CAPABILITIES with 'video') and a GPU that decodes this stream",
                            ff_err(e)
                        ))
                    })?
                }
            }
        };
        state.begin_pass();
        let mut packet = ff::Packet::empty();
        let mut frame = ff::frame::Video::empty();
        'demux: loop {
            check_deadline(self.deadline)?;
            if run.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Ok(Pass::Stopped);
            }
            if state.wanted.is_empty() {
                break;
            }
            if let Some(seeker) = seeker.as_deref_mut() {
                let next_wanted = *state.wanted.keys().next().expect("wanted is not empty");
                if let Some(key) = seeker.keys.jump_target(next_wanted, seeker.next_unsent) {
                    let ret = unsafe {
                        ffi::av_seek_frame(
                            input.input().as_mut_ptr(),
                            self.stream_index as i32,
                            key.pts,
                            ffi::AVSEEK_FLAG_BACKWARD,
                        )
                    };
                    stats.seeks += 1;
                    if ret < 0 {
                        check_deadline(self.deadline)?;
                        return Ok(Pass::SeekMissed);
                    }
                    decoder.flush();
                    seeker.jumped(key);
                    state.after_seek(key.index);
                }
            }
            match read_packet(&mut packet, input.input()) {
                Ok(()) => {}
                Err(ff::Error::Eof) => break,
                Err(ff::Error::Other { errno: 11 }) => continue,
                Err(e) => {
                    check_deadline(self.deadline)?;
                    return Err(SmgError::VideoDecode(format!("corrupt or truncated container: {}", ff_err(e))));
                }
            }
            if packet.stream() != self.stream_index {
                continue;
            }
            stats.packets_sent += 1;
            if let Some(seeker) = seeker.as_deref_mut() {
                seeker.sent(packet.pts());
            }
            if let Some(skipper) = skipper {
                let discard = match skipper.discardable(packet.pts(), &state.wanted) {
                    Some(index) => {
                        state.discarding(index);
                        ffi::AVDiscard::AVDISCARD_NONREF
                    }
                    None => ffi::AVDiscard::AVDISCARD_DEFAULT,
                };
                unsafe { (*decoder.as_mut_ptr()).skip_frame = discard };
            }
            if decoder.send_packet(&packet).is_err() {
                state.decoder_error();
            }
            match self.drain(&mut decoder, &mut frame, state, seeker.as_deref_mut(), sink, false)? {
                Drained::AllServed => break 'demux,
                Drained::SeekMissed => return Ok(Pass::SeekMissed),
                Drained::NeedsInput => {}
            }
            state.check_errors(stats.packets_sent)?;
        }
        if !state.wanted.is_empty() {
            let _ = decoder.send_eof();
            if let Drained::SeekMissed = self.drain(&mut decoder, &mut frame, state, seeker.as_deref_mut(), sink, true)? {
                return Ok(Pass::SeekMissed);
            }
        }
        // A seek whose keyframe never came out must not let older frames stand in for later ones.
        if seeker.is_some_and(|s| s.unconfirmed.is_some()) && !state.wanted.is_empty() {
            return Ok(Pass::SeekMissed);
        }
        drop(decoder);
        drop(input);
        Ok(Pass::Finished)
    }
}
