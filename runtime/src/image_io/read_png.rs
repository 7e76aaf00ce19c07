//! PNG input through the `png` crate, strictly: checksums (chunk CRCs, ancillary chunks
//! included, and the zlib stream's Adler-32) are verified, a truncated or damaged file is an
//! error, and the size in the header is checked before any pixel buffer is allocated.

use std::io::Cursor;

use png::{BitDepth, ColorType, DecodeOptions, Limits, Transformations};

use super::{check_dimensions, oriented, Rgb8, MAX_DECODE_BYTES, MAX_TEXT_BYTES};

type Reader<'a> = png::Reader<Cursor<&'a [u8]>>;

/// A reader past the header and the chunks before the image data, set up to give 8-bit samples
/// the way OpenCV's `IMREAD_COLOR` gets them from libpng: palette and 1/2/4-bit grey expanded,
/// 16-bit samples cut to their high byte (libpng's `png_set_strip_16`).
fn open(bytes: &[u8]) -> Result<Reader<'_>, String> {
    let mut options = DecodeOptions::default();
    options.set_ignore_adler32(false);
    options.set_ignore_crc(false);
    options.set_skip_ancillary_crc_failures(false);
    let mut decoder = png::Decoder::new_with_options(Cursor::new(bytes), options);
    // The decoder's own allocations (rows, metadata chunks): a second line of defence behind
    // the pixel check below.
    decoder.set_limits(Limits {
        bytes: MAX_DECODE_BYTES,
    });
    let header = decoder.read_header_info().map_err(damaged)?;
    check_dimensions(header.width, header.height)?;
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    decoder.read_info().map_err(damaged)
}

fn damaged(e: png::DecodingError) -> String {
    match e {
        png::DecodingError::LimitsExceeded => {
            format!("damaged or oversized PNG: needs more than {MAX_DECODE_BYTES} bytes to decode")
        }
        e => format!("damaged PNG: {e}"),
    }
}

/// Decodes a whole PNG as RGB8 (alpha dropped, grey replicated), oriented by its eXIf chunk.
pub(super) fn decode(bytes: &[u8]) -> Result<Rgb8, String> {
    let mut reader = open(bytes)?;
    let (color, depth) = reader.output_color_type();
    let size = reader
        .output_buffer_size()
        .filter(|&n| n <= MAX_DECODE_BYTES)
        .ok_or("PNG image too large to decode")?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(damaged)?;
    // The chunks after the image data must be intact too, up to IEND.
    reader.finish().map_err(damaged)?;
    if depth != BitDepth::Eight {
        return Err(format!("unexpected PNG output depth {depth:?}"));
    }
    let channels = match color {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => return Err("PNG palette was not expanded".into()),
    };
    let (w, h) = (frame.width as usize, frame.height as usize);
    buf.truncate(frame.buffer_size());
    let rgb = to_rgb(&buf, channels);
    let img = Rgb8::new(w, h, rgb).map_err(|e| e.to_string())?;
    Ok(oriented(img, reader.info().exif_metadata.as_deref()))
}

/// Grey replicated to RGB; alpha dropped, not blended (OpenCV's `IMREAD_COLOR`).
fn to_rgb(samples: &[u8], channels: usize) -> Vec<u8> {
    match channels {
        3 => samples.to_vec(),
        4 => samples
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        _ => samples
            .chunks_exact(channels)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
    }
}

/// The text chunks (tEXt, then zTXt, then iTXt, each in file order) of a PNG, which must be
/// intact as a whole (the image data is read row by row and checked, not kept).
pub(super) fn text(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut reader = open(bytes)?;
    while reader.next_row().map_err(damaged)?.is_some() {}
    reader.finish().map_err(damaged)?;
    let info = reader.info();
    let mut text = Vec::new();
    for chunk in &info.uncompressed_latin1_text {
        text.push((chunk.keyword.clone(), chunk.text.clone()));
    }
    let inflate_error = |key: &str, e: png::DecodingError| {
        format!("damaged PNG: text chunk {key:?}: {e} (at most {MAX_TEXT_BYTES} bytes are read)")
    };
    for chunk in &info.compressed_latin1_text {
        let mut chunk = chunk.clone();
        chunk
            .decompress_text_with_limit(MAX_TEXT_BYTES)
            .and_then(|_| chunk.get_text())
            .map(|value| text.push((chunk.keyword.clone(), value)))
            .map_err(|e| inflate_error(&chunk.keyword, e))?;
    }
    for chunk in &info.utf8_text {
        let mut chunk = chunk.clone();
        chunk
            .decompress_text_with_limit(MAX_TEXT_BYTES)
            .and_then(|_| chunk.get_text())
            .map(|value| text.push((chunk.keyword.clone(), value)))
            .map_err(|e| inflate_error(&chunk.keyword, e))?;
    }
    Ok(text)
}
