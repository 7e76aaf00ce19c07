//! The image loader against OpenCV, and its refusal of oversized, truncated and damaged files.
//!
//! Expected pixels: tests/data/image_io, written by tests/reference/image_io.py with
//! `cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1]` (OpenCV 5.0, libpng 1.6, libjpeg-turbo 3.1).
//! Damaged files are made here from the good ones; what is expected of them is a refusal.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use idpatch::image_io::{self, decode_rgb8, Rgb8, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE};

fn data(name: &str) -> PathBuf {
    common::test_data("image_io").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The cases of cases.json: (name, file, width, height).
fn cases(ext: &str) -> Vec<(String, String, usize, usize)> {
    let meta: serde_json::Value = common::read_json(&data("cases.json"));
    let cases = meta["cases"].as_object().expect("cases.json has cases");
    let out: Vec<_> = cases
        .iter()
        .filter(|(_, c)| c["file"].as_str().unwrap().ends_with(ext))
        .map(|(name, c)| {
            let dim = |k: &str| c[k].as_u64().unwrap() as usize;
            let file = c["file"].as_str().unwrap().to_string();
            (name.clone(), file, dim("width"), dim("height"))
        })
        .collect();
    assert!(!out.is_empty(), "no {ext} cases in cases.json");
    out
}

/// The uint8 (H, W, 3) array of a reference .npy file.
fn expected_rgb(name: &str, width: usize, height: usize) -> Vec<u8> {
    let bytes = read(&format!("{name}.npy"));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{name}.npy");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let shape = format!("({height}, {width}, 3)");
    assert!(
        header.contains("'|u1'") && header.contains(&shape) && header.contains("False"),
        "{name}.npy: {header}"
    );
    bytes[10 + header_len..].to_vec()
}

fn load(file: &str) -> Rgb8 {
    image_io::load_rgb8(&data(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

// 16-bit samples: OpenCV keeps the high byte (libpng's png_set_strip_16), which differs from
// rounding (v * 255 / 65535, or (v + 128) / 257) on a quarter of all values: the 16-bit cases
// hold random samples, so an exact match tells the two apart. JPEGs go through libjpeg as in
// OpenCV (same IDCT and upsampling), so they match exactly too; CMYK uses OpenCV's conversion.
// Orientation included: png_exif6 and jpeg_exif6 are stored landscape and shown portrait.
#[test]
fn png_and_jpeg_decode_exactly_as_opencv() {
    let all = [cases(".png"), cases(".jpg")].concat();
    assert_eq!(all.len(), 24, "cases.json");
    for (name, file, width, height) in all {
        let img = load(&file);
        assert_eq!((img.width(), img.height()), (width, height), "{name}");
        let want = expected_rgb(&name, width, height);
        let differing = img.data().iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing, 0,
            "{name}: {differing} samples differ from OpenCV"
        );
    }
}

/// Standard CRC-32 of a PNG chunk's type and data.
fn crc(kind_and_data: &[u8]) -> [u8; 4] {
    crc32fast::hash(kind_and_data).to_be_bytes()
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc(&body));
    out
}

/// The chunks of a PNG: (offset of the length field, type, data).
fn png_chunks(png: &[u8]) -> Vec<(usize, [u8; 4], Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = png[at + 4..at + 8].try_into().unwrap();
        out.push((at, kind, png[at + 8..at + 8 + len].to_vec()));
        at += 12 + len;
    }
    out
}

/// `png` with its IHDR declaring `width` x `height` (CRC fixed up); the image data is unchanged.
fn png_claiming(png: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = png.to_vec();
    out[16..20].copy_from_slice(&width.to_be_bytes());
    out[20..24].copy_from_slice(&height.to_be_bytes());
    let fixed = crc(&out[12..29]);
    out[29..33].copy_from_slice(&fixed);
    out
}

/// `jpeg` with its frame header (SOF0/SOF2) declaring `width` x `height`.
fn jpeg_claiming(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let sof = (0..jpeg.len() - 1)
        .find(|&i| jpeg[i] == 0xFF && matches!(jpeg[i + 1], 0xC0 | 0xC2))
        .expect("a SOF0 or SOF2 marker");
    let mut out = jpeg.to_vec();
    out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    out
}

fn refused(bytes: &[u8], what: &str) -> String {
    match decode_rgb8(bytes) {
        Ok(img) => panic!("{what}: decoded as {}x{}", img.width(), img.height()),
        Err(e) => e,
    }
}

#[test]
fn oversized_headers_are_refused_before_decoding() {
    let png = read("png_grey1.png");
    let jpeg = read("jpeg_420.jpg");
    let over_pixels = (MAX_IMAGE_PIXELS as f64).sqrt() as u32 + 1;
    let cases = [
        ("PNG 60000x60000", png_claiming(&png, 60_000, 60_000)),
        (
            "PNG one side over",
            png_claiming(&png, MAX_IMAGE_SIDE + 1, 1),
        ),
        (
            "PNG over the pixel limit",
            png_claiming(&png, over_pixels, over_pixels),
        ),
        ("JPEG 65000x65000", jpeg_claiming(&jpeg, 65_000, 65_000)),
        (
            "JPEG over the pixel limit",
            jpeg_claiming(&jpeg, over_pixels as u16, over_pixels as u16),
        ),
    ];
    for (what, bytes) in cases {
        let started = Instant::now();
        let err = refused(&bytes, what);
        assert!(err.contains("scale it down"), "{what}: {err}");
        // Refused from the header: no decoding of billions of pixels.
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: took {:?}",
            started.elapsed()
        );
    }
    // At the limits exactly, the header passes (the data then does not match it).
    let err = refused(
        &png_claiming(&png, MAX_IMAGE_SIDE, 4096),
        "PNG at the limit",
    );
    assert!(!err.contains("scale it down"), "{err}");
    let err = refused(&png_claiming(&png, 0, 14), "PNG 0x14");
    assert!(
        err.contains("damaged PNG") || err.contains("no pixels"),
        "{err}"
    );
}

/// Cut points: a fifth, a half, nine tenths, and the last few bytes (end markers).
fn cuts(len: usize) -> Vec<usize> {
    vec![len / 5, len / 2, len * 9 / 10, len - 20, len - 2, len - 1]
}

#[test]
fn truncated_files_are_refused() {
    for file in ["png_rgb8.png", "png_rgb16_adam7.png", "png_palette4.png"] {
        let bytes = read(file);
        for cut in cuts(bytes.len()) {
            let err = refused(&bytes[..cut], &format!("{file} cut at {cut}"));
            assert!(err.starts_with("damaged PNG"), "{file} at {cut}: {err}");
        }
    }
    let jpegs = [
        "jpeg_grey.jpg",
        "jpeg_420.jpg",
        "jpeg_progressive.jpg",
        "jpeg_restart.jpg",
        "jpeg_cmyk.jpg",
    ];
    for file in jpegs {
        let bytes = read(file);
        for cut in cuts(bytes.len()) {
            let err = refused(&bytes[..cut], &format!("{file} cut at {cut}"));
            assert!(err.starts_with("damaged JPEG"), "{file} at {cut}: {err}");
        }
    }
}

/// Offset of the first byte after the first SOS segment (the entropy-coded data).
fn scan_start(jpeg: &[u8]) -> usize {
    let sos = (0..jpeg.len() - 1)
        .find(|&i| jpeg[i] == 0xFF && jpeg[i + 1] == 0xDA)
        .expect("an SOS marker");
    sos + 2 + u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]) as usize
}

#[test]
fn damaged_jpeg_data_is_refused() {
    for file in ["jpeg_420.jpg", "jpeg_restart.jpg", "jpeg_progressive.jpg"] {
        let good = read(file);
        let start = scan_start(&good);
        let middle = start + (good.len() - start) / 2;
        // A marker where entropy-coded data belongs.
        let mut stray = good.clone();
        stray[middle..middle + 2].copy_from_slice(&[0xFF, 0xC4]);
        // A run of damaged bytes (zeroed, as a bad disk sector leaves them).
        let mut zeroed = good.clone();
        zeroed[start + 4..good.len() - 4].fill(0);
        // Bytes removed from the middle of the scan.
        let mut shortened = good[..middle].to_vec();
        shortened.extend_from_slice(&good[middle + 40..]);
        for (what, bytes) in [
            ("stray marker", stray),
            ("zeroed", zeroed),
            ("shortened", shortened),
        ] {
            let err = refused(&bytes, &format!("{file}: {what}"));
            assert!(err.starts_with("damaged JPEG"), "{file}: {what}: {err}");
        }
    }
}

#[test]
fn damaged_png_data_is_refused() {
    let good = read("png_rgb8.png");
    let chunks = png_chunks(&good);
    let (idat_at, _, idat) = chunks.iter().find(|c| &c.1 == b"IDAT").unwrap().clone();
    let data_at = idat_at + 8;
    let rebuild = |idat_data: &[u8], extra: &[u8]| {
        let mut out = good[..idat_at].to_vec();
        out.extend_from_slice(extra);
        out.extend_from_slice(&png_chunk(b"IDAT", idat_data));
        out.extend_from_slice(&png_chunk(b"IEND", b""));
        out
    };
    // A flipped bit in the image data: the chunk's CRC no longer matches.
    let mut bad_crc = good.clone();
    bad_crc[data_at + idat.len() / 2] ^= 0x10;
    // The same flip with the CRC recomputed: the zlib stream is damaged or its Adler-32 is.
    let mut flipped = idat.clone();
    flipped[idat.len() / 2] ^= 0x10;
    let bad_zlib = rebuild(&flipped, &[]);
    // The zlib stream cut short inside a valid IDAT chunk.
    let short_idat = rebuild(&idat[..idat.len() * 3 / 4], &[]);
    // Only the Adler-32 at the end of the zlib stream is wrong.
    let mut adler = idat.clone();
    let n = adler.len();
    adler[n - 1] ^= 0xFF;
    let bad_adler = rebuild(&adler, &[]);
    // An ancillary chunk with a bad CRC.
    let mut text = png_chunk(b"tEXt", b"Comment\0hello");
    let last = text.len() - 1;
    text[last] ^= 0xFF;
    let bad_text = rebuild(&idat, &text);
    let cases = [
        ("IDAT CRC", bad_crc),
        ("zlib data", bad_zlib),
        ("short IDAT", short_idat),
        ("Adler-32", bad_adler),
        ("tEXt CRC", bad_text),
    ];
    for (what, bytes) in cases {
        let err = refused(&bytes, what);
        assert!(err.starts_with("damaged PNG"), "{what}: {err}");
    }
    // The rebuilt file with intact data decodes: the cases above fail for their damage only.
    assert_eq!(
        decode_rgb8(&rebuild(&idat, &png_chunk(b"tEXt", b"Comment\0hello"))).unwrap(),
        decode_rgb8(&good).unwrap()
    );
}

#[test]
fn png_text_goes_through_the_same_checks() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.png");
    std::fs::write(&huge, png_claiming(&read("png_grey1.png"), 60_000, 60_000)).unwrap();
    let err = image_io::read_png_text(&huge).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("scale it down"), "{err}");

    let truncated = dir.path().join("truncated.png");
    let good = image_io::encode_png(&load("png_rgb8.png"), &[("prompt", "a b c")]).unwrap();
    std::fs::write(&truncated, &good[..good.len() - 30]).unwrap();
    let err = image_io::read_png_text(&truncated).unwrap_err().to_string();
    assert!(err.contains("damaged PNG"), "{err}");

    // A compressed text chunk that inflates past the limit is refused, not inflated.
    let bomb = dir.path().join("bomb.png");
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, 1, 1);
        encoder.set_color(png::ColorType::Grayscale);
        encoder
            .add_ztxt_chunk("note".into(), "x".repeat(4 << 20))
            .unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[0]).unwrap();
        writer.finish().unwrap();
    }
    assert!(out.len() < 100_000, "{} bytes", out.len());
    std::fs::write(&bomb, &out).unwrap();
    let err = image_io::read_png_text(&bomb).unwrap_err().to_string();
    assert!(err.contains("text chunk \"note\""), "{err}");
}

#[test]
fn oversized_and_endless_files_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.png");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(image_io::MAX_IMAGE_FILE_BYTES + 1).unwrap(); // sparse: no disk used
    let err = image_io::load_rgb8(&big).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("more than the"), "{err}");
    // A device that never ends is refused before it is opened, not read up to the limit.
    let err = idpatch::fsutil::read_limited(Path::new("/dev/zero"), 1 << 20, "image").unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        "/dev/zero: image file is a character device, not a regular file"
    );
}
