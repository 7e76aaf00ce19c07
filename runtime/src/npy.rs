//! Reading and writing NumPy `.npy` files (format 1.0-3.0, little-endian, C order), for golden
//! tensors, `--raw` dumps and user-supplied arrays such as initial noise or ID patches.
//!
//! A header is checked before the data it describes is read or allocated: at most 64 KiB long,
//! at most 64 dimensions, the shape's product computed with overflow checks, at most
//! [`MAX_DATA_BYTES`] of data, and no more data than the file holds.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use half::f16;

use crate::tensor::{Tensor, TensorData};
use crate::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Longest header accepted, in bytes (NumPy's own reader stops at 10,000 by default).
const MAX_HEADER_BYTES: usize = 65_536;
/// Most dimensions accepted (NumPy 2 allows 64).
const MAX_DIMS: usize = 64;
/// Largest array read, in bytes of data (2 GiB: far above any golden tensor or user array).
pub const MAX_DATA_BYTES: u64 = 1 << 31;

/// What the header says: dtype, shape, where the data starts and how long it is.
struct Header {
    descr: &'static str,
    shape: Vec<usize>,
    data_start: usize,
    data_len: usize,
}

/// Reads a `.npy` file (float32, float16, int64 or int32, little-endian, C order). The header is
/// read and checked first (dimensions multiplied with overflow checks, the data at most
/// [`MAX_DATA_BYTES`] and no longer than the file), so an absurd or lying header is refused
/// before the data is allocated.
///
/// Errors: [`Error::Io`] when the file cannot be read; [`Error::InvalidInput`] naming the path
/// when it is not a readable `.npy` file.
pub fn read(path: &Path) -> Result<Tensor> {
    let bad = |reason: String| {
        Error::invalid_input(
            path.display().to_string(),
            format!("not a readable .npy file: {reason}"),
        )
    };
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut prefix = Vec::new();
    (&mut file)
        .take(12)
        .read_to_end(&mut prefix)
        .map_err(|e| Error::io(path, e))?;
    let header_end = header_end(&prefix).map_err(bad)?;
    prefix.resize(header_end, 0);
    file.read_exact(&mut prefix[12.min(header_end)..])
        .map_err(|_| bad("truncated header".into()))?;
    let header = parse_header(&prefix).map_err(bad)?;
    let available = file_len.saturating_sub(header_end as u64);
    if (header.data_len as u64) > available {
        return Err(bad(format!(
            "data truncated: the header's shape {:?} needs {} bytes, the file holds {available}",
            header.shape, header.data_len
        )));
    }
    let mut data = Vec::new();
    data.try_reserve_exact(header.data_len)
        .map_err(|_| bad(format!("cannot allocate {} bytes", header.data_len)))?;
    (&mut file)
        .take(header.data_len as u64)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(path, e))?;
    if data.len() != header.data_len {
        return Err(bad(format!(
            "data truncated: need {} bytes, have {}",
            header.data_len,
            data.len()
        )));
    }
    tensor(header, &data).map_err(bad)
}

/// Parses `.npy` bytes already in memory, with the checks of [`read`].
pub fn parse(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    let header = parse_header(bytes)?;
    let body = &bytes[header.data_start..];
    let data = body.get(..header.data_len).ok_or_else(|| {
        format!(
            "data truncated: need {} bytes, have {}",
            header.data_len,
            body.len()
        )
    })?;
    tensor(header, data)
}

/// Where the header ends (the data starts), from the first 12 bytes of a file.
fn header_end(prefix: &[u8]) -> std::result::Result<usize, String> {
    if prefix.len() < 10 || &prefix[..6] != MAGIC {
        return Err("missing NUMPY magic".into());
    }
    let (len, start) = match prefix[6] {
        1 => (usize::from(u16::from_le_bytes([prefix[8], prefix[9]])), 10),
        2 | 3 => {
            let b = prefix.get(8..12).ok_or("truncated header")?;
            let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (usize::try_from(len).unwrap_or(usize::MAX), 12)
        }
        v => return Err(format!("unsupported format version {v}")),
    };
    if len > MAX_HEADER_BYTES {
        return Err(format!(
            "header of {len} bytes, at most {MAX_HEADER_BYTES} are read"
        ));
    }
    Ok(start + len)
}

fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let header_end = header_end(bytes)?;
    let start = if bytes[6] == 1 { 10 } else { 12 };
    let header = bytes.get(start..header_end).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = header_value(header, "descr").ok_or("header has no descr")?;
    let fortran = header_value(header, "fortran_order").ok_or("header has no fortran_order")?;
    let shape_text = header_value(header, "shape").ok_or("header has no shape")?;
    if fortran.trim() != "False" {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape = parse_shape(shape_text)?;
    let (descr, item) = match descr.trim().trim_matches(|c| c == '\'' || c == '"') {
        "<f4" => ("<f4", 4),
        "<f2" => ("<f2", 2),
        "<i8" => ("<i8", 8),
        "<i4" => ("<i4", 4),
        other => {
            return Err(format!(
                "unsupported dtype {other} (float32, float16, int64, int32)"
            ))
        }
    };
    let data_len = shape
        .iter()
        .try_fold(item, |n: usize, &d| n.checked_mul(d))
        .filter(|&n| n as u64 <= MAX_DATA_BYTES)
        .ok_or_else(|| {
            format!(
                "shape {shape:?} is too large (at most {MAX_DATA_BYTES} bytes of data are read)"
            )
        })?;
    Ok(Header {
        descr,
        shape,
        data_start: header_end,
        data_len,
    })
}

/// The tensor of a checked header and exactly its data bytes.
fn tensor(header: Header, data: &[u8]) -> std::result::Result<Tensor, String> {
    let shape = header.shape;
    match header.descr {
        "<f4" => Tensor::from_shape_vec(
            shape,
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        "<f2" => Tensor::from_shape_vec(
            shape,
            data.chunks_exact(2)
                .map(|c| f16::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        "<i8" => Tensor::from_shape_vec(
            shape,
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        _ => Tensor::from_shape_vec(
            shape,
            data.chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
    }
    .map_err(|e| e.to_string())
}

/// The raw text of `key`'s value in a header dict such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find(',').unwrap_or(rest.len())
    };
    Some(&rest[..end])
}

fn parse_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = text.trim().trim_start_matches('(').trim_end_matches(')');
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape entry {s:?}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if shape.len() > MAX_DIMS {
        return Err(format!("{} dimensions, at most {MAX_DIMS}", shape.len()));
    }
    Ok(shape)
}

pub fn to_bytes(tensor: &Tensor) -> Vec<u8> {
    let descr = match tensor.data() {
        TensorData::F32(_) => "<f4",
        TensorData::F16(_) => "<f2",
        TensorData::I64(_) => "<i8",
        TensorData::I32(_) => "<i4",
    };
    let shape = match tensor.shape() {
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, newline-terminated, as NumPy does.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + tensor.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match tensor.data() {
        TensorData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::F16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    out
}

/// Writes `tensor` to `path` through a temporary file, so a failed write leaves nothing behind.
pub fn write(path: &Path, tensor: &Tensor) -> Result<()> {
    crate::fsutil::write_atomic(path, &to_bytes(tensor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype() {
        let tensors = [
            Tensor::from_f32(vec![2, 3], vec![0.5, -1.0, 2.0, 3.25, 1e-8, f32::MAX]).unwrap(),
            Tensor::from_i64(vec![3], vec![49406, -1, 0]).unwrap(),
            Tensor::from_shape_vec(vec![1, 2], vec![f16::from_f32(0.1), f16::ONE]).unwrap(),
            Tensor::from_shape_vec::<i32>(vec![0], vec![]).unwrap(),
        ];
        for t in tensors {
            let bytes = to_bytes(&t);
            assert_eq!(parse(&bytes).unwrap(), t);
        }
    }

    /// A float32 .npy header claiming `shape`, followed by `data` zero bytes.
    fn with_header(shape: &str, data: usize) -> Vec<u8> {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        bytes
    }

    #[test]
    fn absurd_or_lying_headers_are_refused_before_reading_the_data() {
        let cases = [
            (
                with_header("(4294967296, 4294967296, 2)", 0),
                "is too large",
            ),
            (with_header("(65536, 65536)", 16), "is too large"),
            (
                with_header("(2, 3)", 20),
                "data truncated: need 24 bytes, have 20",
            ),
            (
                with_header(&format!("({})", "1, ".repeat(65)), 4),
                "65 dimensions",
            ),
            (with_header("(2, -3)", 0), "bad shape entry"),
        ];
        for (bytes, expected) in cases {
            let err = parse(&bytes).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        let mut long = b"\x93NUMPY\x02\x00".to_vec();
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&long).unwrap_err().contains("at most 65536"));

        // From a file: the file's length is compared with the header before anything is read.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lying.npy");
        std::fs::write(&path, with_header("(1024, 1024, 256)", 8)).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("needs 1073741824 bytes, the file holds 8"),
            "{err}"
        );
        std::fs::write(&path, with_header("(2, 3)", 24)).unwrap();
        assert_eq!(read(&path).unwrap().shape(), [2, 3]);
    }

    #[test]
    fn rejects_truncated_data() {
        let t = Tensor::from_f32(vec![4], vec![1.0; 4]).unwrap();
        let bytes = to_bytes(&t);
        let err = parse(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }
}
