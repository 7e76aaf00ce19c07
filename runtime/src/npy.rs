//! Reading and writing NumPy `.npy` files (format 1.0-3.0, little-endian, C order), for golden
//! tensors, `--raw` dumps and user-supplied arrays such as initial noise or ID patches.

use std::path::Path;

use half::f16;

use crate::tensor::{Tensor, TensorData};
use crate::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes).map_err(|reason| {
        Error::invalid_input(
            path.display().to_string(),
            format!("not a readable .npy file: {reason}"),
        )
    })
}

pub fn parse(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("missing NUMPY magic".into());
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported format version {v}")),
    };
    let header_end = header_start + header_len;
    let header = bytes
        .get(header_start..header_end)
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = header_value(header, "descr").ok_or("header has no descr")?;
    let fortran = header_value(header, "fortran_order").ok_or("header has no fortran_order")?;
    let shape_text = header_value(header, "shape").ok_or("header has no shape")?;
    if fortran.trim() != "False" {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape = parse_shape(shape_text)?;
    let n: usize = shape.iter().product();
    let body = &bytes[header_end..];
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let need = |size: usize| -> std::result::Result<&[u8], String> {
        body.get(..n * size).ok_or_else(|| {
            format!(
                "data truncated: need {} bytes, have {}",
                n * size,
                body.len()
            )
        })
    };
    let data = match descr {
        "<f4" => TensorData::F32(
            need(4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        "<f2" => TensorData::F16(
            need(2)?
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        "<i8" => TensorData::I64(
            need(8)?
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        "<i4" => TensorData::I32(
            need(4)?
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        other => {
            return Err(format!(
                "unsupported dtype {other} (float32, float16, int64, int32)"
            ))
        }
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
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
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape entry {s:?}"))
        })
        .collect()
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
            Tensor::new(
                vec![1, 2],
                TensorData::F16(vec![f16::from_f32(0.1), f16::ONE]),
            )
            .unwrap(),
            Tensor::new(vec![0], TensorData::I32(vec![])).unwrap(),
        ];
        for t in tensors {
            let bytes = to_bytes(&t);
            assert_eq!(parse(&bytes).unwrap(), t);
        }
    }

    #[test]
    fn rejects_truncated_data() {
        let t = Tensor::from_f32(vec![4], vec![1.0; 4]).unwrap();
        let bytes = to_bytes(&t);
        let err = parse(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }
}
