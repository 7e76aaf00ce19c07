//! TensorRT provider settings: optimisation profiles from the graph's dynamic axes, and engine
//! caches keyed by the graph's weights and the GPU model.

use std::path::{Path, PathBuf};

use super::ShapeRanges;
use crate::backend::GraphIo;
use crate::manifest::{sha256_file, Dim, GraphEntry};
use crate::Result;

/// The `trt_profile_{min,opt,max}_shapes` strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileShapes {
    pub min: String,
    pub opt: String,
    pub max: String,
}

/// TensorRT profile strings (`name:1x4x64x64,name2:...`) for every input with a dynamic axis.
/// Ok(None) when no input is dynamic; Err(axis) for an axis [`ShapeRanges`] has no range for.
pub fn trt_profile_shapes(
    io: &GraphIo,
    ranges: &ShapeRanges,
) -> std::result::Result<Option<ProfileShapes>, String> {
    let mut parts: [Vec<String>; 3] = Default::default();
    for spec in &io.inputs {
        if spec.shape.iter().all(|d| matches!(d, Dim::Fixed(_))) {
            continue;
        }
        let mut dims: [Vec<String>; 3] = Default::default();
        for dim in &spec.shape {
            let (lo, opt, hi) = match dim {
                Dim::Fixed(n) => (*n, *n, *n),
                Dim::Symbol(s) => ranges.axis(s).ok_or_else(|| s.clone())?,
            };
            for (out, n) in dims.iter_mut().zip([lo, opt, hi]) {
                out.push(n.to_string());
            }
        }
        for (part, d) in parts.iter_mut().zip(&dims) {
            part.push(format!("{}:{}", spec.name, d.join("x")));
        }
    }
    if parts[0].is_empty() {
        return Ok(None);
    }
    let [min, opt, max] = parts.map(|p| p.join(","));
    Ok(Some(ProfileShapes { min, opt, max }))
}

/// TensorRT's precision options for a graph of `precision` (its manifest entry's), as ONNX
/// Runtime's provider option names: `trt_fp16_enable` as asked (`fp16`), and for an INT8 (QDQ)
/// graph `trt_int8_enable` with no `trt_int8_calibration_table_name`: the graph's Q/DQ scales
/// are TensorRT's explicit quantization, and TensorRT refuses a calibration table for a graph
/// holding Q/DQ nodes. FP16 stays on beside INT8 so that the layers the graph keeps in float
/// (time embeddings, normalisations, attention products) run in FP16, as NVIDIA's SDXL INT8
/// engines do.
pub fn trt_precision_options(precision: &str, fp16: bool) -> Vec<(&'static str, String)> {
    let flag = |on: bool| if on { "1" } else { "0" }.to_string();
    let int8 = precision == "int8";
    vec![
        ("trt_fp16_enable", flag(fp16 || int8)),
        ("trt_int8_enable", flag(int8)),
    ]
}

/// `$IDPATCH_HOME/cache/tensorrt`, else `$XDG_CACHE_HOME/idpatch/tensorrt`, else
/// `~/.cache/idpatch/tensorrt`, else `target/tensorrt-cache`.
pub fn default_trt_cache_root() -> PathBuf {
    crate::fsutil::cache_root()
        .map(|root| root.join("tensorrt"))
        .unwrap_or_else(|| PathBuf::from("target/tensorrt-cache"))
}

/// The engine cache directory for one graph on one GPU model.
pub fn trt_cache_dir(root: &Path, graph_sha256: &str, gpu: &str) -> PathBuf {
    let slug: String = gpu
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let short = &graph_sha256[..graph_sha256.len().min(16)];
    root.join(format!("{short}-{slug}"))
}

/// The manifest entry for a graph file, when the file sits in a set directory that lists it.
/// A digest that changes with the graph's weights: from the manifest entry's sha256 of the graph
/// file and of its external data when there is an entry, else the sha256 of the file itself.
pub(super) fn graph_digest(path: &Path, entry: Option<&GraphEntry>) -> Result<String> {
    use sha2::{Digest, Sha256};
    let Some(entry) = entry else {
        return sha256_file(path);
    };
    let mut hasher = Sha256::new();
    hasher.update(entry.sha256.as_bytes());
    for f in &entry.external_data {
        hasher.update(f.sha256.as_bytes());
    }
    Ok(crate::checksum::hex(&hasher.finalize()))
}

/// The GPU model for a CUDA ordinal from the NVIDIA driver's /proc entries (PCI order, which is
/// CUDA's order with CUDA_DEVICE_ORDER=PCI_BUS_ID and on single-GPU machines), if readable.
pub(super) fn gpu_model(device_id: i32) -> Option<String> {
    let mut gpus: Vec<PathBuf> = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    gpus.sort();
    let info = std::fs::read_to_string(
        gpus.get(usize::try_from(device_id).ok()?)?
            .join("information"),
    )
    .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Model:"))
        .map(|m| m.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::TensorSpec;
    use crate::tensor::DType;

    fn spec(name: &str, dims: &[&str]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: DType::Float32,
            shape: dims
                .iter()
                .map(|d| match d.parse() {
                    Ok(n) => Dim::Fixed(n),
                    Err(_) => Dim::Symbol(d.to_string()),
                })
                .collect(),
        }
    }

    #[test]
    fn profiles_cover_sequence_latents_and_batch() {
        let io = GraphIo {
            inputs: vec![
                spec("sample", &["batch", "4", "latent_height", "latent_width"]),
                spec("encoder_hidden_states", &["batch", "sequence", "2048"]),
                spec("conditioning_scale", &["1"]),
                spec(
                    "down_residual_8",
                    &["batch", "1280", "latent_height_4", "latent_width_4"],
                ),
                spec(
                    "controlnet_cond",
                    &["batch", "3", "image_height", "image_width"],
                ),
            ],
            outputs: vec![],
        };
        let p = trt_profile_shapes(&io, &ShapeRanges::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            p.min,
            "sample:1x4x64x64,encoder_hidden_states:1x77x2048,\
             down_residual_8:1x1280x16x16,controlnet_cond:1x3x512x512"
        );
        assert_eq!(
            p.opt,
            "sample:2x4x128x128,encoder_hidden_states:2x109x2048,\
             down_residual_8:2x1280x32x32,controlnet_cond:2x3x1024x1024"
        );
        assert_eq!(
            p.max,
            "sample:2x4x192x192,encoder_hidden_states:2x205x2048,\
             down_residual_8:2x1280x48x48,controlnet_cond:2x3x1536x1536"
        );
    }

    #[test]
    fn profiles_are_absent_for_static_graphs_and_refused_for_unknown_axes() {
        let fixed = GraphIo {
            inputs: vec![spec("x", &["1", "3"])],
            outputs: vec![],
        };
        assert_eq!(
            trt_profile_shapes(&fixed, &ShapeRanges::default()),
            Ok(None)
        );
        let odd = GraphIo {
            inputs: vec![spec("x", &["frames", "3"])],
            outputs: vec![],
        };
        assert_eq!(
            trt_profile_shapes(&odd, &ShapeRanges::default()),
            Err("frames".to_string())
        );
    }

    // ONNX Runtime 1.31.1's TensorRT provider option names (OrtTensorRTProviderOptionsV2 keys).
    #[test]
    fn int8_graphs_enable_int8_and_fp16_without_a_calibration_table() {
        let on = |list: &[(&str, String)], key: &str| {
            list.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        };
        let int8 = trt_precision_options("int8", false);
        assert_eq!(on(&int8, "trt_int8_enable").as_deref(), Some("1"));
        assert_eq!(on(&int8, "trt_fp16_enable").as_deref(), Some("1"));
        assert!(int8.iter().all(|(k, _)| !k.contains("calibration")));
        for precision in ["fp32", "fp16"] {
            let list = trt_precision_options(precision, true);
            assert_eq!(on(&list, "trt_int8_enable").as_deref(), Some("0"));
            assert_eq!(on(&list, "trt_fp16_enable").as_deref(), Some("1"));
        }
        let fp32_only = trt_precision_options("fp32", false);
        assert_eq!(on(&fp32_only, "trt_fp16_enable").as_deref(), Some("0"));
    }

    #[test]
    fn cache_dir_names_graph_and_gpu() {
        let dir = trt_cache_dir(Path::new("/c"), &"ab".repeat(32), "NVIDIA H100 80GB HBM3");
        assert_eq!(dir, Path::new("/c/abababababababab-nvidia-h100-80gb-hbm3"));
    }
}
