//! JPEG input through libjpeg (the libjpeg-turbo code base, as MozJPEG ships it), the decoder
//! OpenCV uses, so that pixels match `cv2.imread` exactly.
//!
//! libjpeg reports damaged data (a truncated file, bad Huffman codes, missing or extraneous
//! entropy-coded bytes, out-of-order restart markers) as warnings and goes on, filling in what
//! is missing; here every warning is an error. libjpeg reports errors by calling a function
//! that must not return: ours unwinds (the C library is built with unwind tables), and the
//! unwinding is caught at [`decode`], so a damaged file is an `Err`, never a panic or abort.

use std::ffi::c_int;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mozjpeg::{ColorSpace, Decompress, Marker};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error, J_COLOR_SPACE};

use super::{check_dimensions, oriented, Rgb8};

/// libjpeg's `JMSG_LENGTH_MAX`: the longest formatted message, terminating NUL included.
const MESSAGE_LENGTH: usize = 200;

/// Decodes a JPEG as RGB8, oriented by its EXIF orientation. Grey is replicated; CMYK and YCCK
/// are decoded to CMYK and converted as OpenCV does (see [`cmyk_to_rgb`]).
pub(super) fn decode(bytes: &[u8]) -> Result<Rgb8, String> {
    match catch_unwind(AssertUnwindSafe(|| decode_strict(bytes))) {
        Ok(result) => result,
        Err(payload) => Err(match payload.downcast::<String>() {
            Ok(message) => format!("damaged JPEG: {message}"),
            Err(_) => "damaged JPEG".to_string(),
        }),
    }
}

/// The decoding; any libjpeg error or warning unwinds out of it.
fn decode_strict(bytes: &[u8]) -> Result<Rgb8, String> {
    let header = Decompress::builder()
        .with_err(strict_error_manager())
        .with_markers(&[Marker::APP(1)])
        .from_mem(bytes)
        .map_err(|e| format!("damaged JPEG: {e}"))?;
    let (width, height) = header.size();
    let side = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    // Only the header has been read: nothing image-sized is allocated before this check.
    check_dimensions(side(width), side(height))?;
    let exif = header
        .markers()
        .find_map(|m| m.data.strip_prefix(b"Exif\0\0").map(<[u8]>::to_vec));
    let cmyk = matches!(
        header.color_space(),
        J_COLOR_SPACE::JCS_CMYK | J_COLOR_SPACE::JCS_YCCK
    );
    let mut started = if cmyk {
        header.to_colorspace(ColorSpace::JCS_CMYK)
    } else {
        header.rgb()
    }
    .map_err(|e| format!("damaged JPEG: {e}"))?;
    let pixels: Vec<u8> = started
        .read_scanlines()
        .map_err(|e| format!("damaged JPEG: {e}"))?;
    // Reads on to the end-of-image marker: a file cut after the last scan is caught here.
    started.finish().map_err(|e| format!("damaged JPEG: {e}"))?;
    let channels = if cmyk { 4 } else { 3 };
    if pixels.len() != width * height * channels {
        return Err(format!(
            "damaged JPEG: {} of {height} rows decoded",
            pixels.len() / (width * channels).max(1)
        ));
    }
    let rgb = if cmyk { cmyk_to_rgb(&pixels) } else { pixels };
    let img = Rgb8::new(width, height, rgb).map_err(|e| e.to_string())?;
    Ok(oriented(img, exif.as_deref()))
}

/// CMYK as libjpeg gives Adobe files (inverted: 255 is no ink) to RGB, as OpenCV's JPEG reader
/// converts it: each of C, M, Y becomes `k - ((255 - v) * k >> 8)`.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    cmyk.chunks_exact(4)
        .flat_map(|p| {
            let k = u32::from(p[3]);
            let ink = |v: u8| (k - (((255 - u32::from(v)) * k) >> 8)) as u8;
            [ink(p[0]), ink(p[1]), ink(p[2])]
        })
        .collect()
}

/// libjpeg's standard error manager, with errors and warnings both unwinding with their text.
/// Trace messages (levels above 0) stay silent.
fn strict_error_manager() -> jpeg_error_mgr {
    // SAFETY: jpeg_error_mgr is plain C data (integers, pointers, function pointers) for which
    // all-zero is a valid value, and jpeg_std_error fills every field.
    let mut manager: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { jpeg_std_error(&mut manager) };
    manager.error_exit = Some(fail);
    manager.emit_message = Some(warn);
    manager
}

unsafe extern "C-unwind" fn fail(cinfo: &mut jpeg_common_struct) {
    resume_unwind(Box::new(message(cinfo)));
}

unsafe extern "C-unwind" fn warn(cinfo: &mut jpeg_common_struct, level: c_int) {
    // An unknown JFIF revision is a version note, not damage; libjpeg reads the file as usual.
    let jfif_revision =
        cinfo.err.as_ref().map(|e| e.msg_code) == Some(mozjpeg_sys::JWRN_JFIF_MAJOR as c_int);
    if level < 0 && !jfif_revision {
        resume_unwind(Box::new(message(cinfo)));
    }
}

/// The text of libjpeg's current message.
fn message(cinfo: &mut jpeg_common_struct) -> String {
    // SAFETY: `err` points at the manager set up by `strict_error_manager`, which libjpeg keeps
    // alive for the whole decompression.
    let Some(format) = (unsafe { cinfo.err.as_ref() }).and_then(|e| e.format_message) else {
        return "libjpeg error".to_string();
    };
    let mut buffer = [0u8; MESSAGE_LENGTH];
    // SAFETY: libjpeg's format_message writes at most JMSG_LENGTH_MAX bytes, NUL included, into
    // its buffer argument; the binding declares that argument as a shorter shared array, so it
    // is called through a pointer type that says what libjpeg does.
    unsafe {
        let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8) =
            std::mem::transmute(format);
        format(cinfo, buffer.as_mut_ptr());
    }
    let end = buffer
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(MESSAGE_LENGTH);
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}
