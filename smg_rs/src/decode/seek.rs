//! Keyframe seeking for [`super::VideoDecoder::decode_selected`]: which keyframe a frame is
//! decoded from, when a seek skips whole GOPs, whether a seek landed where it should, and how the
//! wanted frames split into GOP runs for one decoder per thread.
use ffmpeg_next as ff;
use std::collections::BTreeMap;

/// The GOP runs of `indices` (increasing): consecutive indices sharing a governing keyframe,
/// each with that keyframe's index (None before the first keyframe).
fn gop_runs(keys: &KeyframeIndex, indices: impl Iterator<Item = usize>) -> Vec<(Option<usize>, Vec<usize>)> {
    let mut runs: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
    for index in indices {
        let key = keys.governing(index).map(|k| k.index);
        match runs.last_mut() {
            Some((k, members)) if *k == key => members.push(index),
            _ => runs.push((key, vec![index])),
        }
    }
    runs
}

/// Splits the wanted frames into at most `parts` contiguous groups of whole GOP runs (wanted
/// frames sharing a governing keyframe stay together), with roughly equal numbers of wanted
/// frames. Empty when there are fewer than two groups.
pub(super) fn split_by_gop(
    keys: &KeyframeIndex,
    wanted: &BTreeMap<usize, Vec<usize>>,
    parts: usize,
) -> Vec<BTreeMap<usize, Vec<usize>>> {
    let runs = gop_runs(keys, wanted.keys().copied());
    let parts = parts.min(runs.len());
    if parts < 2 {
        return Vec::new();
    }
    let mut groups: Vec<BTreeMap<usize, Vec<usize>>> = Vec::with_capacity(parts);
    let mut current: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut unplaced = wanted.len();
    let run_count = runs.len();
    for (r, (_, members)) in runs.into_iter().enumerate() {
        let groups_left = parts - groups.len(); // counting the current one
        if !current.is_empty() && groups_left > 1 {
            // Close the current group when the runs left are just enough for the groups left,
            // or when this run would take it further past its fair share than it is below it.
            let share2 = 2 * (current.len() + unplaced) / groups_left;
            if run_count - r < groups_left || 2 * current.len() + members.len() > share2 {
                groups.push(std::mem::take(&mut current));
            }
        }
        unplaced -= members.len();
        for index in members {
            current.insert(index, wanted[&index].clone());
        }
    }
    groups.push(current);
    if groups.len() < 2 {
        return Vec::new();
    }
    groups
}

/// What one more FFmpeg frame thread adds to a single decoder's speed (H.264 frame threading
/// scales sublinearly: ~1.45x with 2 threads measured on a 2-core VM).
const FRAME_THREAD_GAIN_PER_THREAD: f64 = 0.45;

/// Frames a decoder works through for `group`: from the keyframe each of its GOP runs starts at
/// to the run's last wanted frame (seeking skips what lies between runs).
pub(super) fn decode_cost(keys: &KeyframeIndex, group: &BTreeMap<usize, Vec<usize>>) -> usize {
    gop_runs(keys, group.keys().copied())
        .iter()
        .map(|(key, members)| members[members.len() - 1] + 1 - key.unwrap_or(0))
        .sum()
}

/// Whether one single-threaded decoder per group (wall time: the costliest group) beats one
/// decoder with `threads` frame threads walking every group (the whole cost over the frame-thread
/// gain). Unbalanced splits, e.g. a 250-frame GOP and a 50-frame one, go to the single decoder.
pub(super) fn parallel_pays_off(costs: &[usize], threads: usize) -> bool {
    let total: usize = costs.iter().sum();
    let slowest = costs.iter().copied().max().unwrap_or(0);
    let gain = 1.0 + FRAME_THREAD_GAIN_PER_THREAD * threads.saturating_sub(1) as f64;
    threads >= 2 && costs.len() >= 2 && (slowest as f64) * gain < total as f64
}

/// `SMG_RS_SEQUENTIAL_DECODE=1` (read per call) turns off GOP seeking and NONREF skipping.
pub(super) fn sequential_decode_forced() -> bool {
    std::env::var_os("SMG_RS_SEQUENTIAL_DECODE").is_some_and(|v| v != "0")
}

/// A keyframe of the video stream: its presentation index and timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Keyframe {
    pub(super) index: usize,
    pub(super) pts: i64,
}

/// The keyframes of a stream whose packets all carry distinct timestamps, in presentation order.
#[derive(Debug, Clone)]
pub(super) struct KeyframeIndex {
    pub(super) keys: Vec<Keyframe>,
}

impl KeyframeIndex {
    /// `frame_pts`: every frame's timestamp, sorted; `key_pts`: those of key packets.
    pub(super) fn new(frame_pts: &[i64], mut key_pts: Vec<i64>) -> Option<Self> {
        // Timestamp -> frame index must be one-to-one to know where a keyframe sits.
        if !frame_pts.windows(2).all(|w| w[0] < w[1]) {
            return None;
        }
        key_pts.sort_unstable();
        key_pts.dedup();
        let keys: Vec<Keyframe> = key_pts
            .into_iter()
            .filter_map(|pts| frame_pts.binary_search(&pts).ok().map(|index| Keyframe { index, pts }))
            .collect();
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// The keyframe frame `index` is decoded from: the last one at or before it in
    /// presentation order (pictures shown before their GOP's keyframe but decoded after it,
    /// open-GOP leading pictures, depend on the previous GOP and so map to the previous keyframe).
    pub(super) fn governing(&self, index: usize) -> Option<Keyframe> {
        match self.keys.partition_point(|k| k.index <= index) {
            0 => None,
            k => Some(self.keys[k - 1]),
        }
    }

    /// Where to seek before decoding on towards `next_wanted`, given that frames from
    /// `next_unsent` on (presentation order) have not been sent to the decoder: the keyframe
    /// `next_wanted` depends on, when at least one unsent frame lies before it. Nothing whose
    /// packet the decoder already has can be wanted then (all such frames precede it).
    pub(super) fn jump_target(&self, next_wanted: usize, next_unsent: usize) -> Option<Keyframe> {
        self.governing(next_wanted).filter(|k| k.index > next_unsent)
    }
}

/// What a decoded frame says about the last seek to `key_pts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Landing {
    /// Shown before the keyframe (an earlier GOP, or a leading picture): never delivered.
    Before,
    /// The keyframe itself, decoded as a key picture: the frames after it are as in order.
    OnKey,
    /// Anything else: the seek did not land where it should.
    Missed,
}

pub(super) fn landing(key_pts: i64, frame_pts: Option<i64>, frame_is_key: bool) -> Landing {
    match frame_pts {
        Some(p) if p < key_pts => Landing::Before,
        Some(p) if p == key_pts && frame_is_key => Landing::OnKey,
        _ => Landing::Missed,
    }
}

/// Seek bookkeeping for one decode pass.
pub(super) struct Seeker<'s> {
    pub(super) keys: &'s KeyframeIndex,
    pub(super) frame_pts: &'s [i64],
    /// Frames at or after this presentation index have not been sent to the decoder.
    pub(super) next_unsent: usize,
    /// The keyframe timestamp of the last seek, until the decoder has produced it.
    pub(super) unconfirmed: Option<i64>,
}

impl<'s> Seeker<'s> {
    pub(super) fn new(keys: &'s KeyframeIndex, frame_pts: &'s [i64]) -> Self {
        Self { keys, frame_pts, next_unsent: 0, unconfirmed: None }
    }

    pub(super) fn sent(&mut self, pts: Option<i64>) {
        if let Some(index) = pts.and_then(|p| self.frame_pts.binary_search(&p).ok()) {
            self.next_unsent = self.next_unsent.max(index + 1);
        }
    }

    pub(super) fn jumped(&mut self, key: Keyframe) {
        self.next_unsent = key.index;
        self.unconfirmed = Some(key.pts);
    }
}

/// Checks a decoded frame against a pending seek; false when the seek missed.
pub(super) fn accept_landing(seeker: Option<&mut Seeker<'_>>, frame: &ff::frame::Video) -> bool {
    let Some(seeker) = seeker else { return true };
    let Some(key_pts) = seeker.unconfirmed else { return true };
    match landing(key_pts, frame.timestamp(), frame.is_key()) {
        Landing::Before => true,
        Landing::OnKey => {
            seeker.unconfirmed = None;
            true
        }
        Landing::Missed => false,
    }
}
