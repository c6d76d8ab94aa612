//! Display orientation: what the stream's display matrix asks for, applied to packed RGB24
//! frames the way the FFmpeg CLI's autorotate does (transpose / hflip / vflip), flips included.
//! TorchCodec applies only the rotation angle (see smg_rs/README.md, "Known differences").

/// How a decoded frame is turned for display. Names follow FFmpeg's `transpose` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Orientation {
    #[default]
    Identity,
    /// Mirror left-right.
    HFlip,
    /// Mirror top-bottom.
    VFlip,
    /// Turn 180° (both mirrors).
    Rot180,
    /// Turn 90° clockwise (`transpose=clock`).
    Rot90Cw,
    /// Turn 90° counter-clockwise (`transpose=cclock`).
    Rot270Cw,
    /// Swap rows and columns along the main diagonal (`transpose=cclock_flip`).
    Transpose,
    /// Swap along the anti-diagonal (`transpose=clock_flip`).
    AntiTranspose,
}

impl Orientation {
    /// The orientation FFmpeg's CLI autorotate derives from a display matrix: the angle of
    /// `av_display_rotation_get` rounded to whole degrees; at 90° and 270° a transpose whose
    /// direction depends on the sign of `m[3]`, at 180° a horizontal flip for `m[0] < 0` and a
    /// vertical one for `m[4] < 0`, at 0° a vertical flip for `m[4] < 0`. Other angles are left
    /// as they are (FFmpeg would rotate by an arbitrary angle, with borders).
    pub fn from_display_matrix(m: &[i32; 9]) -> Self {
        let f = |v: i32| v as f64 / 65536.0;
        let s0 = f(m[0]).hypot(f(m[3]));
        let s1 = f(m[1]).hypot(f(m[4]));
        if s0 == 0.0 || s1 == 0.0 {
            return Self::Identity;
        }
        // av_display_rotation_get: the counter-clockwise angle the matrix turns by.
        let ccw = -(f(m[1]) / s1).atan2(f(m[0]) / s0).to_degrees();
        // Frames are turned clockwise by -ccw to display upright.
        let cw = (-ccw.round()).rem_euclid(360.0);
        let near = |a: f64| (cw - a).abs() < 1.0;
        if near(90.0) {
            if m[3] > 0 { Self::Transpose } else { Self::Rot90Cw }
        } else if near(180.0) {
            match (m[0] < 0, m[4] < 0) {
                (true, true) => Self::Rot180,
                (true, false) => Self::HFlip,
                (false, true) => Self::VFlip,
                (false, false) => Self::Identity,
            }
        } else if near(270.0) {
            if m[3] < 0 { Self::AntiTranspose } else { Self::Rot270Cw }
        } else if near(0.0) || near(360.0) {
            if m[4] < 0 { Self::VFlip } else { Self::Identity }
        } else {
            Self::Identity
        }
    }

    /// Whether width and height trade places.
    pub fn swaps_sides(self) -> bool {
        matches!(self, Self::Rot90Cw | Self::Rot270Cw | Self::Transpose | Self::AntiTranspose)
    }

    /// The clockwise turn in degrees (0, 90, 180, 270) that this orientation contains, as
    /// `av_display_rotation_get` reports it (a mirror counts as no turn, except that a
    /// horizontal flip is FFmpeg's 180° with one mirror).
    pub fn rotation_cw(self) -> u32 {
        match self {
            Self::Identity | Self::VFlip => 0,
            Self::Rot90Cw | Self::Transpose => 90,
            Self::Rot180 | Self::HFlip => 180,
            Self::Rot270Cw | Self::AntiTranspose => 270,
        }
    }

    /// Display size of a `width` x `height` coded frame.
    pub fn display_size(self, width: u32, height: u32) -> (u32, u32) {
        if self.swaps_sides() { (height, width) } else { (width, height) }
    }

    /// Applies the orientation to a packed RGB24 `width` x `height` image; returns the
    /// output's width, height and pixels.
    pub fn apply(self, src: Vec<u8>, width: u32, height: u32) -> (u32, u32, Vec<u8>) {
        if self == Self::Identity {
            return (width, height, src);
        }
        let (w, h) = (width as usize, height as usize);
        let (ow, oh) = self.display_size(width, height);
        let (ow, oh) = (ow as usize, oh as usize);
        // source pixel (x, y) of output pixel (ox, oy)
        let source: fn(usize, usize, usize, usize) -> (usize, usize) = match self {
            Self::Identity => |ox, oy, _, _| (ox, oy),
            Self::HFlip => |ox, oy, w, _| (w - 1 - ox, oy),
            Self::VFlip => |ox, oy, _, h| (ox, h - 1 - oy),
            Self::Rot180 => |ox, oy, w, h| (w - 1 - ox, h - 1 - oy),
            Self::Rot90Cw => |ox, oy, _, h| (oy, h - 1 - ox),
            Self::Rot270Cw => |ox, oy, w, _| (w - 1 - oy, ox),
            Self::Transpose => |ox, oy, _, _| (oy, ox),
            Self::AntiTranspose => |ox, oy, w, h| (w - 1 - oy, h - 1 - ox),
        };
        let mut out = vec![0u8; src.len()];
        for (oy, row) in out.chunks_exact_mut(ow * 3).take(oh).enumerate() {
            for (ox, px) in row.chunks_exact_mut(3).enumerate() {
                let (x, y) = source(ox, oy, w, h);
                let s = (y * w + x) * 3;
                px.copy_from_slice(&src[s..s + 3]);
            }
        }
        (ow as u32, oh as u32, out)
    }
}

#[cfg(test)]
mod tests {
    use super::Orientation::{self, *};

    const ONE: i32 = 1 << 16;

    fn m(a: i32, b: i32, c: i32, d: i32) -> [i32; 9] {
        [a * ONE, b * ONE, 0, c * ONE, d * ONE, 0, 0, 0, 1 << 30]
    }

    #[test]
    fn display_matrices() {
        assert_eq!(Orientation::from_display_matrix(&m(1, 0, 0, 1)), Identity);
        // av_display_rotation_set(90): counter-clockwise 90 -> turn 270 clockwise
        assert_eq!(Orientation::from_display_matrix(&m(0, -1, 1, 0)), Rot270Cw);
        assert_eq!(Orientation::from_display_matrix(&m(0, 1, -1, 0)), Rot90Cw);
        assert_eq!(Orientation::from_display_matrix(&m(-1, 0, 0, -1)), Rot180);
        // mirrors (av_display_matrix_flip): FFmpeg reads hflip as 180° plus a vertical mirror
        assert_eq!(Orientation::from_display_matrix(&m(-1, 0, 0, 1)), HFlip);
        assert_eq!(Orientation::from_display_matrix(&m(1, 0, 0, -1)), VFlip);
        assert_eq!(Orientation::from_display_matrix(&m(0, 1, 1, 0)), Transpose);
        assert_eq!(Orientation::from_display_matrix(&m(0, -1, -1, 0)), AntiTranspose);
        assert_eq!(Orientation::from_display_matrix(&[0; 9]), Identity);
    }

    #[test]
    fn small_image() {
        // 2 wide, 1 tall: pixels A(1,1,1) B(2,2,2)
        let img = vec![1, 1, 1, 2, 2, 2];
        let (w, h, r) = Rot90Cw.apply(img.clone(), 2, 1);
        assert_eq!((w, h), (1, 2));
        assert_eq!(r, vec![1, 1, 1, 2, 2, 2]); // A on top after a clockwise turn
        assert_eq!(Rot270Cw.apply(img.clone(), 2, 1).2, vec![2, 2, 2, 1, 1, 1]);
        assert_eq!(Rot180.apply(img.clone(), 2, 1).2, vec![2, 2, 2, 1, 1, 1]);
        assert_eq!(HFlip.apply(img.clone(), 2, 1).2, vec![2, 2, 2, 1, 1, 1]);
        assert_eq!(VFlip.apply(img.clone(), 2, 1).2, img);
        assert_eq!(Transpose.apply(img.clone(), 2, 1).2, vec![1, 1, 1, 2, 2, 2]);
        assert_eq!(AntiTranspose.apply(img, 2, 1).2, vec![2, 2, 2, 1, 1, 1]);
        // 2x2: [[a, b], [c, d]]
        let sq: Vec<u8> = [1u8, 2, 3, 4].iter().flat_map(|&v| [v; 3]).collect();
        let px = |v: &[u8]| v.chunks(3).map(|p| p[0]).collect::<Vec<_>>();
        assert_eq!(px(&HFlip.apply(sq.clone(), 2, 2).2), vec![2, 1, 4, 3]);
        assert_eq!(px(&VFlip.apply(sq.clone(), 2, 2).2), vec![3, 4, 1, 2]);
        assert_eq!(px(&Rot90Cw.apply(sq.clone(), 2, 2).2), vec![3, 1, 4, 2]);
        assert_eq!(px(&Rot270Cw.apply(sq.clone(), 2, 2).2), vec![2, 4, 1, 3]);
        assert_eq!(px(&Transpose.apply(sq.clone(), 2, 2).2), vec![1, 3, 2, 4]);
        assert_eq!(px(&AntiTranspose.apply(sq, 2, 2).2), vec![4, 2, 3, 1]);
    }
}
