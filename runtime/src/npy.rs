//! Reading and writing NumPy `.npy` files through the `npyz` crate, for golden tensors, `--raw`
//! dumps and user-supplied arrays such as initial noise or ID patches.
//!
//! [`read`] and [`write()`] handle the four dtypes graphs exchange as a [`Tensor`] (float32,
//! float16, int64, int32); [`read_array`] and [`write_array`] any [`NpyElement`] (those four,
//! float64 and uint8) as an `ndarray` array. Any byte order and C or Fortran order are read;
//! files are written as `numpy.save` writes them (format 1.0, little-endian, C order, the header
//! padded to 64 bytes).
//!
//! A header is checked before the data it describes is read or allocated: at most 64 KiB long,
//! at most 64 dimensions, the shape's product computed with overflow checks, at most
//! [`MAX_DATA_BYTES`] of data, and no more data than the file holds.

use std::io::Read;
use std::path::Path;

use half::f16;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use npyz::{NpyFile, Order, TypeChar};

use crate::tensor::{DType, Element, Tensor, TensorData};
use crate::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Longest header accepted, in bytes (NumPy's own reader stops at 10,000 by default).
const MAX_HEADER_BYTES: usize = 65_536;
/// Most dimensions accepted (NumPy 2 allows 64).
const MAX_DIMS: usize = 64;
/// Largest array read, in bytes of data (2 GiB: far above any golden tensor or user array).
pub const MAX_DATA_BYTES: u64 = 1 << 31;

/// Element types read and written as `ndarray` arrays: `f32`, `half::f16`, `i64`, `i32`, `f64`,
/// `u8`.
pub trait NpyElement: npyz::Deserialize + npyz::AutoSerialize + Copy + 'static {
    /// NumPy's name of the dtype, for errors.
    const NAME: &'static str;
}

impl NpyElement for f32 {
    const NAME: &'static str = "float32";
}
impl NpyElement for f16 {
    const NAME: &'static str = "float16";
}
impl NpyElement for i64 {
    const NAME: &'static str = "int64";
}
impl NpyElement for i32 {
    const NAME: &'static str = "int32";
}
impl NpyElement for f64 {
    const NAME: &'static str = "float64";
}
impl NpyElement for u8 {
    const NAME: &'static str = "uint8";
}

/// A checked header: npyz's reading of it, the shape, and where the data starts and ends.
struct Header {
    npy: npyz::NpyHeader,
    shape: Vec<usize>,
    data_start: usize,
    data_len: usize,
}

impl Header {
    /// The graph dtype of a plain float32, float16, int64 or int32 array (either byte order).
    fn tensor_dtype(&self) -> std::result::Result<DType, String> {
        let npyz::DType::Plain(ts) = self.npy.dtype() else {
            return Err("structured arrays are not supported".into());
        };
        match (ts.type_char(), ts.size_field()) {
            (TypeChar::Float, 4) => Ok(DType::Float32),
            (TypeChar::Float, 2) => Ok(DType::Float16),
            (TypeChar::Int, 8) => Ok(DType::Int64),
            (TypeChar::Int, 4) => Ok(DType::Int32),
            _ => Err(format!(
                "unsupported dtype {ts} (float32, float16, int64, int32)"
            )),
        }
    }

    /// The array of the data bytes `data` (exactly `data_len` of them) as `T`.
    fn array<T: NpyElement>(&self, data: &[u8]) -> std::result::Result<ArrayD<T>, String> {
        let file = NpyFile::with_header(self.npy.clone(), data);
        let values = file
            .into_vec::<T>()
            .map_err(|e| format!("expected {} data: {e}", T::NAME))?;
        let shape = IxDyn(&self.shape);
        let array = match self.npy.order() {
            Order::C => ArrayD::from_shape_vec(shape, values),
            Order::Fortran => ArrayD::from_shape_vec(shape.f(), values),
        };
        array.map_err(|e| format!("data does not fit the shape {:?}: {e}", self.shape))
    }

    /// The tensor of the data bytes, in the file's dtype.
    fn tensor(&self, data: &[u8]) -> std::result::Result<Tensor, String> {
        fn wrap<T: NpyElement + Element>(
            h: &Header,
            data: &[u8],
        ) -> std::result::Result<Tensor, String> {
            Ok(Tensor::from_array(h.array::<T>(data)?))
        }
        match self.tensor_dtype()? {
            DType::Float32 => wrap::<f32>(self, data),
            DType::Float16 => wrap::<f16>(self, data),
            DType::Int64 => wrap::<i64>(self, data),
            DType::Int32 => wrap::<i32>(self, data),
        }
    }
}

/// Reads a `.npy` file of float32, float16, int64 or int32 into a tensor. The header is read and
/// checked first (dimensions multiplied with overflow checks, the data at most
/// [`MAX_DATA_BYTES`] and no longer than the file), so an absurd or lying header is refused
/// before the data is allocated.
///
/// Errors: [`Error::Io`] when the file cannot be read; [`Error::InvalidInput`] naming the path
/// when it is not a readable `.npy` file of those dtypes.
pub fn read(path: &Path) -> Result<Tensor> {
    let (header, data) = read_checked(path, MAX_DATA_BYTES)?;
    header.tensor(&data).map_err(|e| not_npy(path, e))
}

/// [`read`] for an input whose size the caller knows: a header declaring more than
/// `max_data_bytes` of data is refused before any data is read (an `--init-noise` file for
/// another image size, say, however large).
pub fn read_at_most(path: &Path, max_data_bytes: u64) -> Result<Tensor> {
    let (header, data) = read_checked(path, max_data_bytes.min(MAX_DATA_BYTES))?;
    header.tensor(&data).map_err(|e| not_npy(path, e))
}

/// Reads a `.npy` file of element type `T` (the file's dtype must be `T`'s, in either byte order)
/// into an array in standard layout, with the checks of [`read`].
pub fn read_array<T: NpyElement>(path: &Path) -> Result<ArrayD<T>> {
    let (header, data) = read_checked(path, MAX_DATA_BYTES)?;
    let array = header.array::<T>(&data).map_err(|e| not_npy(path, e))?;
    Ok(if array.is_standard_layout() {
        array
    } else {
        array.as_standard_layout().into_owned()
    })
}

fn not_npy(path: &Path, reason: String) -> Error {
    Error::invalid_input(
        path.display().to_string(),
        format!("not a readable .npy file: {reason}"),
    )
}

/// The checked header of the file at `path` and its data bytes, at most `max_data` of them.
fn read_checked(path: &Path, max_data: u64) -> Result<(Header, Vec<u8>)> {
    let bad = |reason: String| not_npy(path, reason);
    let mut file = crate::fsutil::open_for_reading(path, ".npy")?;
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
    if header.data_len as u64 > max_data {
        return Err(Error::invalid_input(
            path.display().to_string(),
            format!(
                "the header's shape {:?} holds {} bytes of data, more than the {max_data} bytes expected",
                header.shape, header.data_len
            ),
        ));
    }
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
    Ok((header, data))
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
    header.tensor(data)
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

/// Checks the header at the start of `bytes` (which hold at least the whole header): the shape
/// first, from the header's Python literal, so that npyz never multiplies dimensions that
/// overflow, then npyz's reading of it and the size of the data.
fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let header_end = header_end(bytes)?;
    let start = if bytes[6] == 1 { 10 } else { 12 };
    let text = bytes.get(start..header_end).ok_or("truncated header")?;
    let text = std::str::from_utf8(text).map_err(|_| "header is not text")?;
    let shape = header_shape(text)?;
    let npy = NpyFile::new(&bytes[..header_end])
        .map_err(|e| format!("bad header: {e}"))?
        .header()
        .clone();
    let item = match npy.dtype() {
        npyz::DType::Plain(ts) if !ts.uses_pickled_array() => ts.num_bytes(),
        _ => None,
    }
    .ok_or_else(|| format!("unsupported dtype {}", npy.dtype().descr()))?;
    let data_len = shape
        .iter()
        .try_fold(item, |n: usize, &d| n.checked_mul(d))
        .filter(|&n| n as u64 <= MAX_DATA_BYTES)
        .ok_or_else(|| too_large(&shape))?;
    Ok(Header {
        npy,
        shape,
        data_start: header_end,
        data_len,
    })
}

fn too_large(shape: &[usize]) -> String {
    format!("shape {shape:?} is too large (at most {MAX_DATA_BYTES} bytes of data are read)")
}

/// The `shape` entry of a header dict such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, each dimension a non-negative
/// integer, at most [`MAX_DIMS`] of them, whose product is at most [`MAX_DATA_BYTES`].
fn header_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    use py_literal::Value;
    let dict = match text.trim_end().parse::<Value>() {
        Ok(Value::Dict(entries)) => entries,
        Ok(_) => return Err("header is not a dict".into()),
        Err(e) => return Err(format!("bad header: {e}")),
    };
    let shape = dict
        .iter()
        .find(|(k, _)| matches!(k, Value::String(s) if s == "shape"))
        .map(|(_, v)| v)
        .ok_or("header has no shape")?;
    let Value::Tuple(dims) = shape else {
        return Err(format!("bad shape {shape}"));
    };
    if dims.len() > MAX_DIMS {
        return Err(format!("{} dimensions, at most {MAX_DIMS}", dims.len()));
    }
    let shape = dims
        .iter()
        .map(|d| match d {
            Value::Integer(n) => usize::try_from(n).map_err(|_| format!("bad shape entry {n}")),
            other => Err(format!("bad shape entry {other}")),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n as u64 <= MAX_DATA_BYTES)
        .ok_or_else(|| too_large(&shape))?;
    Ok(shape)
}

/// The bytes `numpy.save` writes for `array` (format 1.0, little-endian, C order): the header
/// as NumPy formats it (`{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, padded
/// with spaces and a newline so that the data starts on a 64-byte boundary), then the elements
/// through npyz's writer for the element's default dtype.
pub fn array_to_bytes<T: NpyElement>(array: &ArrayD<T>) -> Vec<u8> {
    use npyz::TypeWrite;
    let dtype = T::default_dtype();
    let shape = match array.shape() {
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let descr = dtype.descr();
    let mut header = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + array.len() * std::mem::size_of::<T>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    // The element types' default dtypes are plain little-endian (or byte-sized) numbers, and
    // writing into a Vec cannot fail.
    let writer = T::writer(&dtype).expect("a writer for the default dtype");
    for value in array.iter() {
        writer
            .write_one(&mut out, value)
            .expect("npy data written to memory");
    }
    out
}

/// The bytes `numpy.save` writes for `tensor`.
pub fn to_bytes(tensor: &Tensor) -> Vec<u8> {
    match tensor.data() {
        TensorData::F32(a) => array_to_bytes(a),
        TensorData::F16(a) => array_to_bytes(a),
        TensorData::I64(a) => array_to_bytes(a),
        TensorData::I32(a) => array_to_bytes(a),
    }
}

/// Writes `tensor` to `path` through a temporary file, so a failed write leaves nothing behind.
pub fn write(path: &Path, tensor: &Tensor) -> Result<()> {
    crate::fsutil::write_atomic(path, &to_bytes(tensor))
}

/// Writes `array` to `path` as [`write()`] does.
pub fn write_array<T: NpyElement>(path: &Path, array: &ArrayD<T>) -> Result<()> {
    crate::fsutil::write_atomic(path, &array_to_bytes(array))
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
