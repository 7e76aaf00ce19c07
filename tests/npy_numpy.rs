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

// Expected: numpy 2.4.6 numpy.save of each array (tests/reference/npy.py).
#[test]
fn reads_and_writes_what_numpy_does() {
    let dir = common::test_data("npy");
    let reference: serde_json::Value = common::read_json(&dir.join("cases.json"));
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let want = expected_tensor(case);
        assert!(
            npy::to_bytes(&want) == bytes,
            "{file}: written bytes differ from numpy.save's"
        );
        let read = npy::read(&dir.join(file)).unwrap();
        assert_eq!(read.shape(), want.shape(), "{file}");
        assert_eq!(read.dtype(), want.dtype(), "{file}");
        // Compared through the (now checked) writer: bit patterns, so -0.0 counts too.
        assert!(npy::to_bytes(&read) == bytes, "{file}: values read differ");
    }
}
