//! Image files: PNG/JPEG in, PNG out (with text metadata such as generation parameters).
//!
//! Every image a user gives (face photos, and any future server input) is read by
//! [`load_rgb8`] / [`decode_rgb8`], and PNG text by [`read_png_text`], through one checked path:
//! - the file is at most [`MAX_IMAGE_FILE_BYTES`] long, and the width and height in its header
//!   are checked against [`MAX_IMAGE_SIDE`] and [`MAX_IMAGE_PIXELS`] before any pixel buffer is
//!   allocated; behind that check the PNG decoder's allocation limit is set, and libjpeg refuses
//!   sides over 65500 itself;
//! - decoding is strict: a truncated file, damaged entropy-coded or compressed data, or a bad
//!   checksum (PNG chunk CRCs, ancillary chunks included, and the zlib Adler-32) is an error,
//!   never an image with the missing part filled in;
//! - samples become 8-bit RGB as OpenCV's `cv2.imread(path, cv2.IMREAD_COLOR)` (then BGR to RGB)
//!   makes them, the reference of the face path: 16-bit samples keep their high byte (libpng's
//!   `png_set_strip_16`), grey is replicated, palettes are expanded, alpha is dropped (not
//!   blended), CMYK JPEGs are converted as OpenCV converts them, and the EXIF orientation (JPEG
//!   APP1, PNG eXIf) is applied. JPEGs are decoded by libjpeg, as in OpenCV. The result is
//!   identical to OpenCV's for every PNG colour type and bit depth and for grey, YCbCr
//!   (baseline, progressive, restart markers) and CMYK JPEGs (`tests/image_io.rs`).

use std::path::Path;

use image::metadata::Orientation;

use crate::{fsutil, Error, Result};

mod read_jpeg;
mod read_png;

/// Most pixels (width x height) an input image may have: 64 Mi (67,108,864), e.g. 8192 x 8192.
/// OpenCV reads up to 2^30 (`CV_IO_MAX_IMAGE_PIXELS`) and Pillow warns above 89.5 M
/// (`MAX_IMAGE_PIXELS`); a face photo needs far fewer: the face is resampled to 112 x 112, and
/// 64 Mi still takes the full resolution of 48-50 MP phone sensors and 61 MP full-frame cameras.
/// At the limit the decoded RGB image is 192 MiB.
pub const MAX_IMAGE_PIXELS: u64 = 1 << 26;
/// Longest side an input image may have, in pixels (a 16384 x 4096 panorama is at the pixel
/// limit).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest image file read, in bytes (256 MiB): an 8-bit RGB PNG at the pixel limit stored
/// without compression is 192 MiB; camera JPEGs are a tenth of that.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// Most bytes a decoder may allocate for one image: 16-bit RGBA at the pixel limit.
const MAX_DECODE_BYTES: usize = (MAX_IMAGE_PIXELS as usize) * 8;
/// Longest PNG text value inflated from a compressed chunk (zTXt, iTXt), in bytes.
const MAX_TEXT_BYTES: usize = 1 << 20;

/// An 8-bit RGB image, row-major, 3 bytes per pixel, no padding between rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl Rgb8 {
    /// Wraps `data` (`width * height * 3` bytes, RGB, row-major).
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        let expected = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if expected != Some(data.len()) {
            let needed = expected.map_or("too many".to_string(), |n| n.to_string());
            return Err(Error::invalid_input(
                "image",
                format!(
                    "{width}x{height} RGB needs {needed} bytes, buffer has {}",
                    data.len()
                ),
            ));
        }
        Ok(Rgb8 {
            width,
            height,
            data,
        })
    }

    /// A black image.
    pub fn zeros(width: usize, height: usize) -> Self {
        Rgb8 {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixels, RGB, row-major.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The `[r, g, b]` of pixel (x, y); `None` outside the image.
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y * self.width + x) * 3;
        Some([self.data[i], self.data[i + 1], self.data[i + 2]])
    }
}

/// Reads a PNG or JPEG file as RGB8 (see the module documentation for the limits and the
/// conversion).
///
/// Errors: [`Error::Io`] when the file cannot be read; [`Error::InvalidInput`] naming the path
/// when it is too large, not a PNG or JPEG, damaged, or over the size limits.
pub fn load_rgb8(path: &Path) -> Result<Rgb8> {
    let bytes = fsutil::read_limited(path, MAX_IMAGE_FILE_BYTES, "image")?;
    decode_rgb8(&bytes).map_err(|reason| Error::invalid_input(path.display().to_string(), reason))
}

/// Decodes PNG or JPEG bytes as RGB8 (see [`load_rgb8`]); the error says what is wrong.
pub fn decode_rgb8(bytes: &[u8]) -> std::result::Result<Rgb8, String> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return read_png::decode(bytes);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return read_jpeg::decode(bytes);
    }
    Err(match image::guess_format(bytes) {
        Ok(format) => format!("unsupported image format {format:?} (only PNG and JPEG are read)"),
        Err(_) => "not an image file (expected PNG or JPEG)".into(),
    })
}

/// Refuses an image whose header declares more than [`MAX_IMAGE_SIDE`] per side or
/// [`MAX_IMAGE_PIXELS`] in all, or no pixels; called before any pixel buffer is allocated.
pub fn check_dimensions(width: u32, height: u32) -> std::result::Result<(), String> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(format!("image is {width}x{height}: it has no pixels"));
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE || pixels > MAX_IMAGE_PIXELS {
        return Err(format!(
            "image is {width}x{height} ({pixels} pixels); at most {MAX_IMAGE_SIDE} pixels per side \
             and {MAX_IMAGE_PIXELS} in all are read: scale it down first"
        ));
    }
    Ok(())
}

/// `img` turned upright by the EXIF orientation in `exif` (a TIFF structure, as JPEG's APP1 and
/// PNG's eXIf hold it). EXIF that cannot be parsed leaves the image as it is, as OpenCV does:
/// it is metadata, not pixel data.
fn oriented(img: Rgb8, exif: Option<&[u8]>) -> Rgb8 {
    let orientation = exif.and_then(Orientation::from_exif_chunk);
    let Some(orientation) = orientation.filter(|o| *o != Orientation::NoTransforms) else {
        return img;
    };
    let (w, h) = (img.width as u32, img.height as u32);
    let buffer = image::RgbImage::from_raw(w, h, img.data).expect("Rgb8 holds w * h * 3 bytes");
    let mut dynamic = image::DynamicImage::ImageRgb8(buffer);
    dynamic.apply_orientation(orientation);
    let rgb = dynamic.into_rgb8();
    Rgb8 {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    }
}

/// Encodes `img` as an 8-bit RGB PNG carrying `text` as metadata: one chunk per (key, value),
/// tEXt when the value is Latin-1, iTXt (UTF-8) otherwise.
pub fn encode_png(img: &Rgb8, text: &[(&str, &str)]) -> Result<Vec<u8>> {
    let (w, h) = png_size(img)?;
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            check_png_keyword(key)?;
            let latin1 = value.chars().all(|c| c != '\0' && (c as u32) <= 0xFF);
            let added = if latin1 {
                encoder.add_text_chunk(key.to_string(), value.to_string())
            } else {
                encoder.add_itxt_chunk(key.to_string(), value.to_string())
            };
            added.map_err(|e| Error::invalid_input(format!("PNG text {key:?}"), e.to_string()))?;
        }
        let mut writer = encoder
            .write_header()
            .map_err(|e| Error::invalid_input("PNG output", e.to_string()))?;
        writer
            .write_image_data(&img.data)
            .map_err(|e| Error::invalid_input("PNG output", e.to_string()))?;
        writer
            .finish()
            .map_err(|e| Error::invalid_input("PNG output", e.to_string()))?;
    }
    Ok(out)
}

/// Writes `img` as PNG with `text` metadata (see [`encode_png`]); the file appears complete or
/// not at all.
pub fn save_png(path: &Path, img: &Rgb8, text: &[(&str, &str)]) -> Result<()> {
    let bytes = encode_png(img, text)?;
    fsutil::write_atomic(path, &bytes)
}

/// The text metadata (tEXt, zTXt and iTXt chunks) of a PNG file, in file order per chunk kind.
/// The file goes through the same checks as [`load_rgb8`] (size, dimensions, checksums); a
/// compressed text value may inflate to at most 1 MiB.
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let bytes = fsutil::read_limited(path, MAX_IMAGE_FILE_BYTES, "image")?;
    read_png::text(&bytes).map_err(|e| Error::invalid_input(path.display().to_string(), e))
}

fn png_size(img: &Rgb8) -> Result<(u32, u32)> {
    let to_u32 = |n: usize| u32::try_from(n).ok().filter(|&n| n > 0);
    match (to_u32(img.width), to_u32(img.height)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(Error::invalid_input(
            "PNG output",
            format!("cannot encode a {}x{} image", img.width, img.height),
        )),
    }
}

/// PNG keywords are 1-79 printable Latin-1 characters (PNG spec, 11.3.4.3).
fn check_png_keyword(key: &str) -> Result<()> {
    let printable = key
        .chars()
        .all(|c| matches!(c as u32, 0x20..=0x7E | 0xA1..=0xFF));
    let len = key.chars().count();
    if !printable || !(1..=79).contains(&len) || key.starts_with(' ') || key.ends_with(' ') {
        return Err(Error::invalid_input(
            format!("PNG text key {key:?}"),
            "must be 1-79 printable Latin-1 characters without leading or trailing spaces",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Rgb8 {
        let data = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        Rgb8::new(w, h, data).unwrap()
    }

    #[test]
    fn png_round_trip_keeps_pixels_and_text() {
        let dir = std::env::temp_dir().join(format!("idpatch-image-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.png");
        let img = gradient(13, 7);
        let text = [
            ("prompt", "two friends, café"),
            ("seed", "42"),
            ("note", "snow ☃"),
        ];
        save_png(&path, &img, &text).unwrap();
        assert_eq!(load_rgb8(&path).unwrap(), img);
        let got = read_png_text(&path).unwrap();
        for (k, v) in text {
            assert!(
                got.iter().any(|(gk, gv)| gk == k && gv == v),
                "missing {k}={v} in {got:?}"
            );
        }
        assert_eq!(got.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_png_keys_are_rejected() {
        let img = gradient(2, 2);
        for key in ["", " lead", &"k".repeat(80), "tab\tkey", "snow☃"] {
            let err = encode_png(&img, &[(key, "v")]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{key:?}");
            assert!(err.to_string().contains("PNG text key"), "{err}");
        }
    }

    #[test]
    fn wrong_buffer_size_is_an_error() {
        assert!(Rgb8::new(2, 2, vec![0; 11]).is_err());
        assert!(Rgb8::new(usize::MAX, 2, vec![]).is_err());
    }

    #[test]
    fn garbage_and_other_formats_are_rejected() {
        let err = decode_rgb8(b"definitely not an image").unwrap_err();
        assert!(err.contains("not an image"), "{err}");
        let err = decode_rgb8(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap_err();
        assert!(err.contains("unsupported image format"), "{err}");
        let mut truncated = encode_png(&gradient(8, 8), &[]).unwrap();
        truncated.truncate(60);
        let err = decode_rgb8(&truncated).unwrap_err();
        assert!(err.starts_with("damaged PNG"), "{err}");
    }
}
