//! The image pyramid and the crops MTCNN's networks see, resampled the way facenet-pytorch does:
//! `torch.nn.functional.interpolate(mode="area")`, which is adaptive average pooling. Output
//! pixel `i` of `n` over an input span of `m` pixels averages input pixels
//! `floor(i * m / n) .. ceil((i + 1) * m / n)`, in both directions, so windows may overlap and,
//! when enlarging, a pixel is repeated.
//!
//! PyTorch sums a window in f32 and divides by its height, then by its width. Pixels are whole
//! numbers, so the sum is exact whatever the order while it stays below 2^24 (windows of fewer
//! than 65,793 pixels); here every window sum comes from a summed-area table in u32 (exact, with
//! wrapping subtraction), and the average is `sum / height / width` in f32, bit for bit what
//! PyTorch computes (checked against torch 2.2 and 2.11). Networks take
//! `(average - 127.5) * 0.0078125`, planar RGB.

use crate::image_io::Rgb8;

/// Summed-area table of an RGB8 image: entry (y, x) holds the per-channel sums over rows `..y`
/// and columns `..x`, modulo 2^32. Any window's sum is exact as long as it is below 2^32, which
/// holds for every window of an image under 16.8 million pixels (255 * 2^24 < 2^32) and for
/// every window of under 16.8 million pixels in a larger one.
pub struct SummedArea {
    width: usize,
    height: usize,
    /// (height + 1) x (width + 1) x 3.
    sums: Vec<u32>,
}

impl SummedArea {
    /// Builds the table of `img` (one pass, 12 bytes per pixel).
    pub fn new(img: &Rgb8) -> Self {
        let (w, h) = (img.width(), img.height());
        let stride = (w + 1) * 3;
        let mut sums = vec![0u32; (h + 1) * stride];
        let data = img.data();
        for y in 0..h {
            let mut row = [0u32; 3];
            let (above, below) = sums.split_at_mut((y + 1) * stride);
            let above = &above[y * stride..];
            let below = &mut below[..stride];
            for x in 0..w {
                let px = &data[(y * w + x) * 3..(y * w + x) * 3 + 3];
                for c in 0..3 {
                    row[c] = row[c].wrapping_add(u32::from(px[c]));
                    let at = (x + 1) * 3 + c;
                    below[at] = above[at].wrapping_add(row[c]);
                }
            }
        }
        SummedArea {
            width: w,
            height: h,
            sums,
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// Resamples the window `x0 .. x0 + w`, `y0 .. y0 + h` of the image to `out_w` x `out_h`
    /// with area interpolation and writes the network input (planar RGB,
    /// `(v - 127.5) * 0.0078125`) to `out`, which must hold `3 * out_w * out_h` values.
    ///
    /// Panics if the window is empty or leaves the image, or if an output side is 0: callers
    /// clip windows to the image first.
    pub fn resample_into(&self, window: Window, out_w: usize, out_h: usize, out: &mut [f32]) {
        let Window { x0, y0, w, h } = window;
        assert!(w > 0 && h > 0 && out_w > 0 && out_h > 0, "empty resampling");
        assert!(
            x0 + w <= self.width && y0 + h <= self.height,
            "window leaves the image"
        );
        assert_eq!(out.len(), 3 * out_w * out_h);
        let cols = bins(w, out_w);
        let rows = bins(h, out_h);
        let stride = (self.width + 1) * 3;
        let plane = out_w * out_h;
        for (i, &(r0, r1)) in rows.iter().enumerate() {
            let top = (y0 + r0) * stride;
            let bottom = (y0 + r1) * stride;
            let rh = (r1 - r0) as f32;
            for (j, &(c0, c1)) in cols.iter().enumerate() {
                let (left, right) = ((x0 + c0) * 3, (x0 + c1) * 3);
                let cw = (c1 - c0) as f32;
                for c in 0..3 {
                    let sum = self.sums[bottom + right + c]
                        .wrapping_sub(self.sums[bottom + left + c])
                        .wrapping_sub(self.sums[top + right + c])
                        .wrapping_add(self.sums[top + left + c]);
                    // PyTorch's order: the f32 sum divided by the height, then by the width.
                    let average = sum as f32 / rh / cw;
                    out[c * plane + i * out_w + j] = (average - 127.5) * 0.0078125;
                }
            }
        }
    }
}

/// A rectangle of whole pixels: columns `x0 .. x0 + w`, rows `y0 .. y0 + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
}

/// Input span of each of `n` output pixels over `m` input pixels: `floor(i m / n)` to
/// `ceil((i + 1) m / n)`, as PyTorch's adaptive pooling computes them (in integers).
fn bins(m: usize, n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .map(|i| (i * m / n, ((i + 1) * m).div_ceil(n)))
        .collect()
}

/// The pyramid's scales, largest first, as facenet-pytorch computes them (f64): the first maps
/// `min_face_size` pixels onto P-Net's 12-pixel window, each next one is `factor` times the
/// previous, and the last still leaves the shorter side at least 12 pixels.
pub fn scales(width: usize, height: usize, min_face_size: f64, factor: f64) -> Vec<f64> {
    let first = 12.0 / min_face_size;
    let mut shorter = width.min(height) as f64 * first;
    let mut scale = first;
    let mut out = Vec::new();
    while shorter >= 12.0 {
        out.push(scale);
        scale *= factor;
        shorter *= factor;
    }
    out
}

/// Size (width, height) of the pyramid level at `scale`: `int(side * scale + 1)` each, as
/// facenet-pytorch rounds it.
pub fn level_size(width: usize, height: usize, scale: f64) -> (usize, usize) {
    let side = |n: usize| (n as f64 * scale + 1.0) as usize;
    (side(width), side(height))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute-force adaptive average pooling over a planar copy, in the order PyTorch divides.
    fn brute(img: &Rgb8, win: Window, out_w: usize, out_h: usize) -> Vec<f32> {
        let mut out = vec![0f32; 3 * out_w * out_h];
        for i in 0..out_h {
            let (r0, r1) = (i * win.h / out_h, ((i + 1) * win.h).div_ceil(out_h));
            for j in 0..out_w {
                let (c0, c1) = (j * win.w / out_w, ((j + 1) * win.w).div_ceil(out_w));
                for c in 0..3 {
                    let mut sum = 0u32;
                    for y in r0..r1 {
                        for x in c0..c1 {
                            sum += u32::from(img.pixel(win.x0 + x, win.y0 + y).unwrap()[c]);
                        }
                    }
                    let avg = sum as f32 / (r1 - r0) as f32 / (c1 - c0) as f32;
                    out[c * out_w * out_h + i * out_w + j] = (avg - 127.5) * 0.0078125;
                }
            }
        }
        out
    }

    fn noise(w: usize, h: usize) -> Rgb8 {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let data = (0..w * h * 3)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect();
        Rgb8::new(w, h, data).unwrap()
    }

    #[test]
    fn summed_area_windows_equal_direct_sums() {
        let img = noise(37, 29);
        let table = SummedArea::new(&img);
        for (win, ow, oh) in [
            (
                Window {
                    x0: 0,
                    y0: 0,
                    w: 37,
                    h: 29,
                },
                23,
                18,
            ),
            (
                Window {
                    x0: 5,
                    y0: 3,
                    w: 11,
                    h: 9,
                },
                24,
                24,
            ),
            (
                Window {
                    x0: 30,
                    y0: 20,
                    w: 7,
                    h: 9,
                },
                48,
                48,
            ),
            (
                Window {
                    x0: 1,
                    y0: 1,
                    w: 1,
                    h: 1,
                },
                3,
                2,
            ),
        ] {
            let mut ours = vec![0f32; 3 * ow * oh];
            table.resample_into(win, ow, oh, &mut ours);
            assert_eq!(ours, brute(&img, win, ow, oh), "{win:?} -> {ow}x{oh}");
        }
    }

    #[test]
    fn bins_cover_the_span_and_overlap_when_sizes_do_not_divide() {
        // torch.nn.AdaptiveAvgPool1d(3) on 7 inputs averages [0:3], [2:5], [4:7].
        assert_eq!(bins(7, 3), vec![(0, 3), (2, 5), (4, 7)]);
        // Enlarging 2 -> 5 repeats pixels: [0:1] [0:1] [0:2] [1:2] [1:2].
        assert_eq!(bins(2, 5), vec![(0, 1), (0, 1), (0, 2), (1, 2), (1, 2)]);
    }

    #[test]
    fn pyramid_scales_follow_the_reference_loop() {
        // facenet-pytorch's loop in CPython for a 512x512 image, min face 20, factor 0.709:
        // m = 12 / 20; minl = 512 * m; s = m; out = []
        // while minl >= 12: out.append(s); s *= 0.709; minl *= 0.709
        // -> 10 scales, the last 0.027162351627517383.
        let s = scales(512, 512, 20.0, 0.709);
        assert_eq!(s.len(), 10);
        assert_eq!(s[0], 0.6);
        assert_eq!(s[9], 0.027162351627517383);
        // int(512 * 0.6 + 1) = 308, int(300 * 0.6 + 1) = 181.
        assert_eq!(level_size(512, 300, 0.6), (308, 181));
        assert!(scales(19, 500, 20.0, 0.709).is_empty());
    }
}
