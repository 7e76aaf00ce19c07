//! A copy of the tiny set whose graph computes NaN: every number a user gives is range-checked,
//! so a non-finite value can only come from a graph, and this is how the tests make one. The
//! copy's manifest carries the poisoned file's sha256, so the set verifies and the graph runs.
//! Needs tract's ONNX protobuf types (test files that include this are tract-gated).

use std::path::{Path, PathBuf};

use crate::common::{read_json, tiny_dir};

/// Copies the tiny set's files (top level and both tokenizer folders) into `dest`.
pub fn copy_tiny_set(dest: &Path) {
    for sub in ["", "tokenizer", "tokenizer_2"] {
        std::fs::create_dir_all(dest.join(sub)).unwrap();
        for entry in std::fs::read_dir(tiny_dir().join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dest.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
}

/// Sets the first value of the graph's largest float initializer (a weight) to NaN.
pub fn poison_largest_weight(graph_file: &Path) {
    use prost::Message;
    let bytes = std::fs::read(graph_file).unwrap();
    let mut model = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let weight = graph
        .initializer
        .iter_mut()
        .filter(|t| t.data_type == 1) // FLOAT
        .max_by_key(|t| t.raw_data.len() + 4 * t.float_data.len())
        .expect("a float initializer");
    if weight.raw_data.is_empty() {
        weight.float_data[0] = f32::NAN;
    } else {
        weight.raw_data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(graph_file, model.encode_to_vec()).unwrap();
}

/// `dir/poisoned`: the tiny set with a NaN weight in graph `role` (`controlnet`, `unet`, ...),
/// its manifest checksum updated.
pub fn poisoned_set(dir: &Path, role: &str) -> PathBuf {
    let set = dir.join("poisoned");
    copy_tiny_set(&set);
    let graph = set.join(format!("{role}.onnx"));
    poison_largest_weight(&graph);
    let manifest_path = set.join("manifest.json");
    let mut manifest: serde_json::Value = read_json(&manifest_path);
    manifest["graphs"][role]["sha256"] = idpatch::checksum::sha256_file(&graph).unwrap().into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    set
}
