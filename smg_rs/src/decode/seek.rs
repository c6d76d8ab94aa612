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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn keys() -> KeyframeIndex {
        // 30 frames at pts 0, 10, 20, ...; keyframes at frames 0, 12, 24 (listed in decode order, repeated)
        let pts: Vec<i64> = (0..30).map(|i| i * 10).collect();
        KeyframeIndex::new(&pts, vec![240, 0, 120, 120]).unwrap()
    }

    #[test]
    fn keyframe_governing_each_frame() {
        let k = keys();
        assert_eq!(k.keys.iter().map(|k| k.index).collect::<Vec<_>>(), vec![0, 12, 24]);
        assert_eq!(k.governing(0), Some(Keyframe { index: 0, pts: 0 }));
        assert_eq!(k.governing(11).unwrap().index, 0); // just before a keyframe
        assert_eq!(k.governing(12), Some(Keyframe { index: 12, pts: 120 }));
        assert_eq!(k.governing(23).unwrap().index, 12);
        assert_eq!(k.governing(29).unwrap().index, 24);
        // a stream that starts before its first keyframe: nothing to seek to
        let late = KeyframeIndex::new(&[0, 10, 20, 30], vec![20]).unwrap();
        assert_eq!(late.governing(1), None);
        assert_eq!(late.governing(3).unwrap().index, 2);
    }

    #[test]
    fn keyframe_index_needs_distinct_timestamps_and_known_keys() {
        assert!(KeyframeIndex::new(&[0, 10, 10, 20], vec![0]).is_none());
        assert!(KeyframeIndex::new(&[0, 10, 20], vec![]).is_none());
        // a key timestamp no frame has is ignored rather than trusted
        let k = KeyframeIndex::new(&[0, 10, 20], vec![0, 15]).unwrap();
        assert_eq!(k.keys, vec![Keyframe { index: 0, pts: 0 }]);
    }

    #[test]
    fn seek_only_over_unsent_frames() {
        let k = keys();
        // at the start, a wanted frame in the first GOP is decoded in order
        assert_eq!(k.jump_target(5, 0), None);
        // a later GOP: jump to its keyframe, also for a frame exactly on it
        assert_eq!(k.jump_target(13, 0).unwrap().index, 12);
        assert_eq!(k.jump_target(12, 3).unwrap().index, 12);
        assert_eq!(k.jump_target(29, 13).unwrap().index, 24);
        // just before a keyframe: its GOP's keyframe, which was already sent
        assert_eq!(k.jump_target(23, 13), None);
        assert_eq!(k.jump_target(11, 5), None);
        // the keyframe is the next frame to send: nothing to skip
        assert_eq!(k.jump_target(20, 12), None);
        // the decoder already has the wanted frame's packet (B-frame order): never seek
        assert_eq!(k.jump_target(14, 16), None);
    }

    #[test]
    fn seek_landing_is_checked() {
        assert_eq!(landing(120, Some(90), false), Landing::Before);
        assert_eq!(landing(120, Some(120), true), Landing::OnKey);
        assert_eq!(landing(120, Some(120), false), Landing::Missed); // not decoded as a key picture
        assert_eq!(landing(120, Some(130), true), Landing::Missed); // landed after the keyframe
        assert_eq!(landing(120, None, true), Landing::Missed);
        let k = keys();
        let pts: Vec<i64> = (0..30).map(|i| i * 10).collect();
        let mut s = Seeker::new(&k, &pts);
        s.sent(Some(30));
        s.sent(Some(10)); // decode order is not presentation order
        assert_eq!(s.next_unsent, 4);
        let key = k.jump_target(20, s.next_unsent).unwrap();
        s.jumped(key);
        assert_eq!((s.next_unsent, s.unconfirmed), (12, Some(120)));
        assert_eq!(k.jump_target(20, s.next_unsent), None); // no second seek to the same keyframe
    }

    #[test]
    fn gop_runs_split_into_contiguous_groups() {
        let k = keys(); // keyframes at 0, 12, 24
        let wanted = |ix: &[usize]| ix.iter().enumerate().map(|(s, &i)| (i, vec![s])).collect::<BTreeMap<_, _>>();
        let firsts = |groups: &[BTreeMap<usize, Vec<usize>>]| {
            groups.iter().map(|g| g.keys().copied().collect::<Vec<_>>()).collect::<Vec<_>>()
        };
        // one GOP run: nothing to split
        assert!(split_by_gop(&k, &wanted(&[1, 5, 11]), 4).is_empty());
        assert!(split_by_gop(&k, &wanted(&[1, 13]), 1).is_empty());
        // never more groups than GOP runs; whole runs stay together
        let w = wanted(&[0, 3, 11, 12, 20, 29]);
        assert_eq!(firsts(&split_by_gop(&k, &w, 8)), vec![vec![0, 3, 11], vec![12, 20], vec![29]]);
        assert_eq!(firsts(&split_by_gop(&k, &w, 2)), vec![vec![0, 3, 11], vec![12, 20, 29]]);
        // a heavy first run takes one group, the rest share the other
        let w = wanted(&[0, 1, 2, 3, 4, 5, 6, 12, 24]);
        assert_eq!(firsts(&split_by_gop(&k, &w, 2)), vec![vec![0, 1, 2, 3, 4, 5, 6], vec![12, 24]]);
        let w = wanted(&[0, 12, 13, 14, 15, 16, 17, 24]);
        assert_eq!(firsts(&split_by_gop(&k, &w, 2)), vec![vec![0, 12, 13, 14, 15, 16, 17], vec![24]]);
        // many runs: roughly equal shares
        let pts: Vec<i64> = (0..120).map(|i| i * 10).collect();
        let k10 = KeyframeIndex::new(&pts, (0..12).map(|g| g * 100).collect()).unwrap();
        let every5: Vec<usize> = (0..120).step_by(5).collect();
        let sizes = |parts| split_by_gop(&k10, &wanted(&every5), parts).iter().map(|g| g.len()).collect::<Vec<_>>();
        assert_eq!(sizes(2), vec![12, 12]);
        assert_eq!(sizes(3), vec![8, 8, 8]);
        assert_eq!(sizes(5), vec![4, 6, 4, 6, 4]);
        // slots travel with their index
        let mut w = wanted(&[13, 2]);
        w.get_mut(&13).unwrap().push(7);
        assert_eq!(split_by_gop(&k, &w, 2)[1][&13], vec![0, 7]);
    }

    #[test]
    fn parallel_decoding_only_when_the_split_is_balanced_enough() {
        let k = keys(); // keyframes at 0, 12, 24
        let wanted = |ix: &[usize]| ix.iter().enumerate().map(|(s, &i)| (i, vec![s])).collect::<BTreeMap<_, _>>();
        // each GOP run costs from its keyframe to its last wanted frame; gaps between runs are free
        assert_eq!(decode_cost(&k, &wanted(&[3, 5])), 6);
        assert_eq!(decode_cost(&k, &wanted(&[3, 13, 29])), 4 + 2 + 6);
        assert_eq!(decode_cost(&k, &wanted(&[])), 0);
        let early = KeyframeIndex::new(&(0..30).map(|i| i * 10).collect::<Vec<_>>(), vec![50, 120]).unwrap();
        assert_eq!(decode_cost(&early, &wanted(&[2])), 3); // before the first keyframe: from the start
        // 2 threads: parallel while the slowest group is under total / 1.45
        assert!(parallel_pays_off(&[100, 100], 2));
        assert!(parallel_pays_off(&[130, 70], 2));
        assert!(!parallel_pays_off(&[241, 50], 2)); // a 250-frame GOP and a 50-frame one
        assert!(!parallel_pays_off(&[300], 2));
        assert!(!parallel_pays_off(&[10, 10], 1));
        // more threads make the single decoder faster, so the split must be more even
        assert!(parallel_pays_off(&[40, 30, 30], 3) && !parallel_pays_off(&[60, 20, 20], 3));
    }

}
