//! The ONNX Runtime backend on its CPU provider: the tiny set against the PyTorch goldens and
//! against tract, device-resident outputs fed from the ControlNet into the UNet, FP16 graphs fed
//! f32 inputs, and the errors for a missing library or an unavailable GPU provider.
//!
//! These need libonnxruntime 1.31.1. `scripts/test.sh` (the test command CI runs) fetches it
//! and sets ORT_DYLIB_PATH; a plain `cargo test` finds it where `scripts/fetch-onnxruntime.sh`
//! puts it. Without it every test here fails, saying how to get it: a test that could not run
//! must not pass.

#![cfg(feature = "ort")]

mod common;

use std::path::PathBuf;

use common::tiny_dir;
use idpatch::backend::ort::{find_library, OrtOptions, Residency};
use idpatch::backend::{load_checked, to_host_f32, Backend, Graph, Value};
use idpatch::manifest::{Checksums, ModelSet, Role};
use idpatch::{npy, OrtBackend, Tensor};

/// The library to test with: ORT_DYLIB_PATH, else the locations `idpatch` itself searches
/// (IDPATCH_HOME, target/onnxruntime). Panics, saying how to get it, when there is none.
fn ort_lib() -> PathBuf {
    find_library(None).unwrap_or_else(|e| {
        panic!(
            "cannot test the ONNX Runtime backend: {e}; or run the suite with scripts/test.sh, \
             which fetches the library and sets ORT_DYLIB_PATH"
        )
    })
}

fn backend(lib: PathBuf, outputs: Residency) -> OrtBackend {
    OrtBackend::new(OrtOptions {
        library: Some(lib),
        outputs,
        ..OrtOptions::default()
    })
    .unwrap()
}

fn golden_inputs(set: &ModelSet, role: Role) -> Vec<(String, Value)> {
    let dir = set.golden_dir(role).unwrap().unwrap();
    set.entry(role)
        .unwrap()
        .inputs
        .iter()
        .map(|s| {
            let t = npy::read(&dir.join(format!("input.{}.npy", s.name))).unwrap();
            (s.name.clone(), Value::Host(t))
        })
        .collect()
}

fn run_to_host(graph: &mut dyn Graph, inputs: &[(String, Value)]) -> Vec<Tensor> {
    let named: Vec<(&str, &Value)> = inputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let outputs = graph.run(&named).unwrap();
    outputs
        .into_iter()
        .map(|v| to_host_f32(&*graph, v).unwrap())
        .collect()
}

/// max |a - b| / max |b|.
#[cfg(feature = "tract")]
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_f32_vec(), b.to_f32_vec());
    let err = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    assert!(scale > 0.0, "all-zero reference");
    err / scale
}

// Expected values: the golden outputs exporter-specs/export.py saved from the PyTorch modules.
#[test]
fn every_tiny_graph_matches_pytorch_on_ort_cpu() {
    let lib = ort_lib();
    let backend = backend(lib, Residency::Host);
    assert_eq!(backend.name(), "ort-cpu");
    assert_eq!(backend.version(), "1.31.1");
    common::assert_tiny_set_matches_goldens(&backend);
}

// Expected values: tract's outputs for the same golden inputs.
#[cfg(feature = "tract")]
#[test]
fn ort_cpu_agrees_with_tract_on_every_tiny_graph() {
    let lib = ort_lib();
    let set = ModelSet::open(&tiny_dir(), Checksums::Skip).unwrap();
    let ort = backend(lib, Residency::Host);
    let tract = idpatch::TractBackend::new();
    for role in Role::ALL {
        let inputs = golden_inputs(&set, role);
        let mut a = load_checked(&ort, &set, role).unwrap();
        let mut b = load_checked(&tract, &set, role).unwrap();
        let ours = run_to_host(a.as_mut(), &inputs);
        let theirs = run_to_host(b.as_mut(), &inputs);
        assert_eq!(ours.len(), theirs.len(), "{role}");
        for ((x, y), spec) in ours
            .iter()
            .zip(&theirs)
            .zip(&set.entry(role).unwrap().outputs)
        {
            let err = rel_err(x, y);
            assert!(err <= 1e-4, "{role} {}: ort vs tract {err:.3e}", spec.name);
        }
    }
}

/// The ControlNet on its golden inputs, its ten residuals passed as they come (host or device
/// values) into the UNet, whose other inputs are golden. Returns the UNet output on the host and,
/// per residual, whether it stayed in device memory.
fn controlnet_into_unet(backend: &dyn Backend, set: &ModelSet) -> (Tensor, Vec<bool>) {
    let mut controlnet = load_checked(backend, set, Role::Controlnet).unwrap();
    let mut unet = load_checked(backend, set, Role::Unet).unwrap();
    let cn_inputs = golden_inputs(set, Role::Controlnet);
    let named: Vec<(&str, &Value)> = cn_inputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let residuals = controlnet.run(&named).unwrap();
    let on_device = residuals
        .iter()
        .map(|r| matches!(r, Value::Device(_)))
        .collect();
    let names: Vec<String> = controlnet
        .io()
        .outputs
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let mut unet_inputs = golden_inputs(set, Role::Unet);
    unet_inputs.retain(|(n, _)| !names.contains(n));
    unet_inputs.extend(names.into_iter().zip(residuals));
    let mut out = run_to_host(unet.as_mut(), &unet_inputs);
    assert_eq!(out.len(), 1);
    (out.remove(0), on_device)
}

// Expected values: tract running the same chain (an independent implementation), within 1e-4;
// the chain with host outputs on the same provider, exactly.
#[test]
fn device_outputs_feed_the_unet_without_host_copies() {
    let lib = ort_lib();
    let set = ModelSet::open(&tiny_dir(), Checksums::Skip).unwrap();
    let (host, host_residency) = controlnet_into_unet(&backend(lib.clone(), Residency::Host), &set);
    let (device, device_residency) = controlnet_into_unet(&backend(lib, Residency::Device), &set);
    assert_eq!(host_residency, [false; 10]);
    assert_eq!(device_residency, [true; 10]);
    assert_eq!(device.shape(), [2, 4, 8, 8]);
    assert_eq!(host, device, "host and device paths differ");
    #[cfg(feature = "tract")]
    {
        let (tract, _) = controlnet_into_unet(&idpatch::TractBackend::new(), &set);
        let err = rel_err(&device, &tract);
        assert!(err <= 1e-4, "ort device chain vs tract: {err:.3e}");
    }
}

// Expected values: onnxruntime 1.31.1's Python API on the same FP16 graph (tests/reference/ort.py).
#[test]
fn fp16_graph_takes_f32_inputs_and_reads_back_as_f32() {
    let lib = ort_lib();
    let data_dir = common::test_data("ort");
    let reference: serde_json::Value = common::read_json(&data_dir.join("fp16_dense.json"));
    let flat = |key: &str| -> Vec<f32> {
        reference[key]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect()
    };
    let x = Tensor::from_f32(vec![3, 8], flat("x")).unwrap();
    let expected = Tensor::from_f32(vec![3, 5], flat("y")).unwrap();
    for residency in [Residency::Host, Residency::Device] {
        let backend = backend(lib.clone(), residency);
        let mut graph = backend
            .load(Role::PatchProj, &data_dir.join("fp16_dense.onnx"), None)
            .unwrap();
        assert_eq!(graph.io().inputs[0].dtype, idpatch::DType::Float16);
        let x = Value::Host(x.clone());
        let mut outputs = graph.run(&[("x", &x)]).unwrap();
        assert_eq!(outputs[0].dtype(), idpatch::DType::Float16);
        let y = outputs.remove(0);
        let y = to_host_f32(graph.as_ref(), y).unwrap();
        assert_eq!(y.dtype(), idpatch::DType::Float32);
        // Same graph, same provider, same f16 rounding of the input: equal.
        assert_eq!(y, expected);
    }
}

#[test]
fn integer_inputs_are_not_silently_converted() {
    let lib = ort_lib();
    let set = ModelSet::open(&tiny_dir(), Checksums::Skip).unwrap();
    let backend = backend(lib, Residency::Host);
    let mut graph = load_checked(&backend, &set, Role::TextEncoder).unwrap();
    let ids = Value::Host(Tensor::from_f32(vec![1, 77], vec![1.0; 77]).unwrap());
    let err = graph.run(&[("input_ids", &ids)]).unwrap_err().to_string();
    assert!(
        err.contains("input input_ids is float32 [1, 77], the graph takes int64"),
        "{err}"
    );
}

#[test]
fn missing_library_is_a_one_line_error_saying_what_to_install() {
    let tiny = tiny_dir();
    let (code, _, stderr) = common::run(&[
        "validate",
        "--backend",
        "ort",
        "--ort-lib",
        "/nonexistent/libonnxruntime.so.1.31.1",
        "--models",
        tiny.to_str().unwrap(),
        "--graphs",
        "patch_proj",
    ]);
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: --ort-lib: no file at /nonexistent/"),
        "{stderr}"
    );
    assert!(
        lines[0].contains("scripts/fetch-onnxruntime.sh"),
        "{stderr}"
    );
    assert!(lines[0].contains("onnxruntime==1.31.1"), "{stderr}");

    // A file that is not ONNX Runtime.
    let not_ort = tiny.join("manifest.json");
    let (code, _, stderr) = common::run(&[
        "validate",
        "--backend",
        "ort",
        "--ort-lib",
        not_ort.to_str().unwrap(),
        "--models",
        tiny.to_str().unwrap(),
        "--graphs",
        "patch_proj",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("ONNX Runtime library: cannot use"),
        "{stderr}"
    );
}

#[test]
fn unavailable_gpu_provider_is_an_error_not_a_cpu_fallback() {
    let lib = ort_lib();
    // The CPU build of ONNX Runtime has neither provider; on a GPU build without a GPU the
    // provider fails to start instead. Either way: exit 2, nothing run.
    for ep in ["cuda", "tensorrt"] {
        let cache = tempfile::tempdir().unwrap();
        let tiny = tiny_dir();
        let mut args = vec![
            "validate",
            "--backend",
            "ort",
            "--ep",
            ep,
            "--ort-lib",
            lib.to_str().unwrap(),
            "--models",
            tiny.to_str().unwrap(),
            "--graphs",
            "patch_proj",
        ];
        // --trt-cache is a TensorRT setting: with --ep cuda it would itself be the error.
        if ep == "tensorrt" {
            args.extend(["--trt-cache", cache.path().to_str().unwrap()]);
        }
        let (code, stdout, stderr) = common::run(&args);
        assert_eq!(code, 2, "{ep}: {stderr}");
        assert!(stderr.contains(&format!("the {ep} provider")), "{stderr}");
        // ONNX Runtime's own message can end in a newline (the GPU build's does): still one line.
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!stdout.contains("patch_proj "), "{ep} ran anyway: {stdout}");
    }
}

#[test]
fn auto_says_which_provider_it_got() {
    let lib = ort_lib();
    let (code, stdout, stderr) = common::run(&[
        "validate",
        "--backend",
        "ort",
        "--ep",
        "auto",
        "--ort-lib",
        lib.to_str().unwrap(),
        "--models",
        tiny_dir().to_str().unwrap(),
        "--graphs",
        "prompt_proj",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let chose = stderr
        .lines()
        .find_map(|l| l.strip_prefix("ONNX Runtime: --ep auto chose "))
        .unwrap_or_else(|| panic!("no choice reported: {stderr}"));
    let ep = chose.split_whitespace().next().unwrap();
    assert!(["tensorrt", "cuda", "cpu"].contains(&ep), "{chose}");
    assert!(
        stdout.contains(&format!("within tolerance on ort-{ep}")),
        "{stdout}"
    );
}

#[cfg(feature = "tract")]
#[test]
fn bench_compares_tract_and_ort_cpu() {
    let lib = ort_lib();
    let (code, stdout, stderr) = common::run(&[
        "bench",
        "--models",
        tiny_dir().to_str().unwrap(),
        "--ort-lib",
        lib.to_str().unwrap(),
        "--graphs",
        "prompt_proj",
        "--warmup",
        "1",
        "--runs",
        "3",
        "--compare",
        "tract",
        "ort-cpu",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines = common::json_lines(&stdout);
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["config"], "tract");
    assert_eq!(lines[1]["config"], "ort-cpu");
    assert_eq!(lines[1]["backend"], "ort-cpu");
    // Both configurations time the same graph on the same golden inputs.
    assert_eq!(lines[0]["graph"], "prompt_proj");
    assert_eq!(lines[1]["graph"], "prompt_proj");
    assert_eq!(lines[0]["backend"], "tract");
    assert_eq!(lines[0]["shapes"], lines[1]["shapes"], "{stdout}");
    assert_eq!(lines[0]["inputs"], "golden");
    for line in &lines[..2] {
        let median = line["median_ms"].as_f64().unwrap();
        assert!(
            median > 0.0 && line["p90_ms"].as_f64().unwrap() >= median,
            "{line}"
        );
        assert_eq!(line["runs"], 3);
    }
    // The ratio line names the pair in the order given (the quotient itself is plain arithmetic).
    assert_eq!(lines[2]["graph"], "prompt_proj");
    assert_eq!(lines[2]["compare"], serde_json::json!(["tract", "ort-cpu"]));
    let ratio = lines[2]["ratio_of_medians"].as_f64().unwrap();
    assert!(ratio.is_finite() && ratio > 0.0, "{stdout}");
}
