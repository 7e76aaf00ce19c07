//! Image files: PNG/JPEG in, PNG out (with text metadata such as generation parameters).

use std::io::Cursor;
use std::path::Path;

use image::ImageDecoder;

use crate::{fsutil, Error, Result};

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

/// Reads a PNG or JPEG file as RGB8. Grey images are expanded to RGB, alpha is dropped (not
/// blended), 16-bit samples are reduced to 8 bits, and a JPEG's EXIF orientation is applied so
/// phone photos come out upright.
pub fn load_rgb8(path: &Path) -> Result<Rgb8> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb8(&bytes).map_err(|reason| Error::invalid_input(path.display().to_string(), reason))
}

/// Decodes PNG or JPEG bytes as RGB8 (see [`load_rgb8`]); the error says what is wrong.
pub fn decode_rgb8(bytes: &[u8]) -> std::result::Result<Rgb8, String> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read image: {e}"))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(format!(
                "unsupported image format {other:?} (only PNG and JPEG are read)"
            ))
        }
        None => return Err("not an image file (expected PNG or JPEG)".into()),
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("cannot decode image: {e}"))?;
    let orientation = decoder
        .orientation()
        .map_err(|e| format!("cannot decode image: {e}"))?;
    let mut img = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("cannot decode image: {e}"))?;
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err("image is empty (0 pixels)".into());
    }
    Ok(Rgb8 {
        width: w,
        height: h,
        data: rgb.into_raw(),
    })
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
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: String| Error::invalid_input(path.display().to_string(), e);
    let decoder = png::Decoder::new(Cursor::new(&bytes[..]));
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    // Text chunks may also follow the image data: read it all before looking.
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    reader
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("corrupt PNG: {e}")))?;
    reader
        .finish()
        .map_err(|e| bad(format!("corrupt PNG: {e}")))?;
    let info = reader.info();
    let mut text = Vec::new();
    for chunk in &info.uncompressed_latin1_text {
        text.push((chunk.keyword.clone(), chunk.text.clone()));
    }
    for chunk in &info.compressed_latin1_text {
        let value = chunk
            .get_text()
            .map_err(|e| bad(format!("corrupt zTXt chunk: {e}")))?;
        text.push((chunk.keyword.clone(), value));
    }
    for chunk in &info.utf8_text {
        let value = chunk
            .get_text()
            .map_err(|e| bad(format!("corrupt iTXt chunk: {e}")))?;
        text.push((chunk.keyword.clone(), value));
    }
    Ok(text)
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
        assert!(err.contains("cannot decode"), "{err}");
    }
}
