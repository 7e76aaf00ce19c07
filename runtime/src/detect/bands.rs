//! P-Net over a pyramid level in horizontal bands: the same maps as over the whole level, in
//! smaller pieces (tract runs a 48-row band of a large level faster per pixel than the whole
//! level, and bands spread evenly over workers).
//!
//! P-Net sees a 12x12 window at stride 2: map row `r` reads input rows `2r .. 2r + 12`. A band
//! starting at an even input row `s` and `t` rows tall (`t` even, not reaching the bottom) gives
//! exactly map rows `s / 2 .. s / 2 + (t - 10) / 2`: its convolutions see the same pixels, its
//! 2x2 pooling pairs the same rows, and it has no partial pooling window. The band that reaches
//! the bottom also gives the level's last map rows, partial pooling window included. So bands
//! `s_k = k * (t - 10)` cover the map once, without gaps.

use crate::{Error, Result, Tensor};

/// Input rows of a band (even).
pub const BAND_ROWS: usize = 48;
/// Rows two consecutive bands share: P-Net's 12-row window less its stride of 2.
const OVERLAP: usize = 10;
/// Fewest rows P-Net takes (one 12x12 window).
const MIN_ROWS: usize = 12;

/// Input row ranges `[start, end)` of the bands of a level `height` rows tall; one band when
/// the level is not much taller than `band`.
pub fn band_rows(height: usize, band: usize) -> Vec<(usize, usize)> {
    debug_assert!(band % 2 == 0 && band > OVERLAP + 2);
    let step = band - OVERLAP;
    let mut bands = Vec::new();
    let mut start = 0;
    loop {
        // The next band would start at `start + step`; if it would be too short to hold a
        // window, this band runs to the bottom instead.
        if height <= start + band || height - (start + step) < MIN_ROWS {
            bands.push((start, height));
            return bands;
        }
        bands.push((start, start + band));
        start += step;
    }
}

/// Rows `start..end` of a (1, C, H, W) f32 tensor.
pub fn slice_rows(level: &Tensor, (start, end): (usize, usize)) -> Result<Tensor> {
    let [1, c, h, w] = *level.shape() else {
        return Err(Error::invalid_input(
            "pyramid level",
            format!("expected (1, C, H, W), got {:?}", level.shape()),
        ));
    };
    assert!(start < end && end <= h, "band {start}..{end} of {h} rows");
    let data = level.as_f32().expect("pyramid levels are f32");
    let mut out = Vec::with_capacity(c * (end - start) * w);
    for channel in data.chunks_exact(h * w) {
        out.extend_from_slice(&channel[start * w..end * w]);
    }
    Tensor::from_f32(vec![1, c, end - start, w], out)
}

/// Stacks (1, C, m_k, W) f32 tensors along their rows, in order.
pub fn join_rows(parts: Vec<Tensor>) -> Result<Tensor> {
    let (c, w) = match parts.first().map(|t| t.shape()) {
        Some(&[1, c, _, w]) => (c, w),
        other => {
            return Err(Error::invalid_input(
                "P-Net band outputs",
                format!("expected (1, C, rows, W) tensors, got {other:?}"),
            ))
        }
    };
    let mut rows = 0;
    for t in &parts {
        match *t.shape() {
            [1, c2, m, w2] if c2 == c && w2 == w => rows += m,
            _ => {
                return Err(Error::invalid_input(
                    "P-Net band outputs",
                    format!("bands of differing shapes: {:?}", t.shape()),
                ))
            }
        }
    }
    let mut out = vec![0f32; c * rows * w];
    let mut at = 0;
    for t in &parts {
        let m = t.shape()[2];
        let data = t.as_f32().expect("P-Net outputs are f32");
        for ch in 0..c {
            let dst = ch * rows * w + at * w;
            out[dst..dst + m * w].copy_from_slice(&data[ch * m * w..(ch + 1) * m * w]);
        }
        at += m;
    }
    Tensor::from_f32(vec![1, c, rows, w], out)
}

/// Map rows P-Net gives for `rows` input rows (the reference's ceil-mode pooling).
#[cfg(test)]
fn map_rows(rows: usize) -> usize {
    (rows - 2).div_ceil(2) - 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_tile_the_map_without_gaps_or_overlap() {
        for height in 12..400 {
            let bands = band_rows(height, BAND_ROWS);
            let mut next_map_row = 0;
            for (k, &(start, end)) in bands.iter().enumerate() {
                assert_eq!(start % 2, 0);
                assert!(end - start >= MIN_ROWS, "{height}: band {start}..{end}");
                assert_eq!(start / 2, next_map_row, "{height}: band {k}");
                next_map_row += map_rows(end - start);
            }
            assert_eq!(bands.last().unwrap().1, height);
            assert_eq!(next_map_row, map_rows(height), "{height}: {bands:?}");
        }
        assert_eq!(band_rows(48, 48), vec![(0, 48)]);
        assert_eq!(band_rows(100, 48), vec![(0, 48), (38, 86), (76, 100)]);
        // A band of 11 rows after 38..86 could not hold a window: 38..87 takes the rest.
        assert_eq!(band_rows(87, 48), vec![(0, 48), (38, 87)]);
    }

    #[test]
    fn rows_are_sliced_and_joined_per_channel() {
        let level =
            Tensor::from_f32(vec![1, 2, 4, 3], (0..24).map(|v| v as f32).collect()).unwrap();
        let top = slice_rows(&level, (0, 1)).unwrap();
        let rest = slice_rows(&level, (1, 4)).unwrap();
        assert_eq!(top.as_f32().unwrap(), [0.0, 1.0, 2.0, 12.0, 13.0, 14.0]);
        assert_eq!(join_rows(vec![top, rest]).unwrap(), level);
    }
}
