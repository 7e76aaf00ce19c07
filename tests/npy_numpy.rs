//! `.npy` files against numpy: files `numpy.save` wrote are read to the values numpy saved, and
//! the writer produces numpy's bytes exactly (tests/reference/npy.py, tests/data/npy/).

mod common;

use half::f16;
use idpatch::npy;
use idpatch::Tensor;

/// The tensor a reference case describes (floats given as their bit patterns).
fn expected_tensor(case: &serde_json::Value) -> Tensor {
    let shape: Vec<usize> = case["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let values = case["values"].as_array().unwrap();
    let bits = |v: &serde_json::Value| v.as_u64().unwrap();
    let ints = |v: &serde_json::Value| v.as_i64().unwrap();
    match case["dtype"].as_str().unwrap() {
        "float32" => Tensor::from_shape_vec(
            shape,
            values
                .iter()
                .map(|v| f32::from_bits(bits(v) as u32))
                .collect(),
        ),
        "float16" => Tensor::from_shape_vec(
            shape,
            values
                .iter()
                .map(|v| f16::from_bits(bits(v) as u16))
                .collect(),
        ),
        "int64" => Tensor::from_shape_vec(shape, values.iter().map(ints).collect()),
        "int32" => Tensor::from_shape_vec(shape, values.iter().map(|v| ints(v) as i32).collect()),
        other => panic!("unexpected dtype {other}"),
    }
    .unwrap()
}

/// A float64 or uint8 case's values, read through [`npy::read_array`] and written back.
fn check_other_dtype(case: &serde_json::Value, path: &std::path::Path, bytes: &[u8]) {
    let file = case["file"].as_str().unwrap();
    let shape: Vec<usize> = case["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let values = case["values"].as_array().unwrap();
    match case["dtype"].as_str().unwrap() {
        "float64" => {
            let read = npy::read_array::<f64>(path).unwrap();
            assert_eq!(read.shape(), shape.as_slice(), "{file}");
            let bits: Vec<u64> = read.iter().map(|x| x.to_bits()).collect();
            let want: Vec<u64> = values.iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(bits, want, "{file}");
            assert!(
                npy::array_to_bytes(&read) == bytes,
                "{file}: written bytes differ"
            );
            assert!(npy::read_array::<u8>(path).is_err(), "{file} read as uint8");
        }
        "uint8" => {
            let read = npy::read_array::<u8>(path).unwrap();
            assert_eq!(read.shape(), shape.as_slice(), "{file}");
            let want: Vec<u8> = values.iter().map(|v| v.as_u64().unwrap() as u8).collect();
            assert_eq!(read.iter().copied().collect::<Vec<_>>(), want, "{file}");
            assert!(
                npy::array_to_bytes(&read) == bytes,
                "{file}: written bytes differ"
            );
            let err = npy::read(path).unwrap_err().to_string();
            assert!(err.contains("unsupported dtype |u1"), "{err}");
        }
        other => panic!("unexpected dtype {other}"),
    }
}

// Expected: numpy 2.4.6 numpy.save of each array (tests/reference/npy.py). Files numpy wrote in
// C order and little-endian (`native`) are also what the writer must produce byte for byte; the
// Fortran-order and big-endian files must read to the same values.
#[test]
fn reads_and_writes_what_numpy_does() {
    let dir = common::test_data("npy");
    let reference: serde_json::Value = common::read_json(&dir.join("cases.json"));
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 13);
    let mut foreign = 0;
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let path = dir.join(file);
        let bytes = std::fs::read(&path).unwrap();
        if matches!(case["dtype"].as_str(), Some("float64" | "uint8")) {
            check_other_dtype(case, &path, &bytes);
            continue;
        }
        let want = expected_tensor(case);
        let read = npy::read(&path).unwrap();
        assert_eq!(read.shape(), want.shape(), "{file}");
        assert_eq!(read.dtype(), want.dtype(), "{file}");
        // Compared through the writer: bit patterns, so -0.0 counts too.
        assert!(
            npy::to_bytes(&read) == npy::to_bytes(&want),
            "{file}: values read differ"
        );
        if case["native"].as_bool().unwrap() {
            assert!(
                npy::to_bytes(&want) == bytes,
                "{file}: written bytes differ from numpy.save's"
            );
        } else {
            foreign += 1;
        }
    }
    assert_eq!(foreign, 2, "the Fortran-order and big-endian files");
}
