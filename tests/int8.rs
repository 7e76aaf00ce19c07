//! The INT8 CI set (models/tiny-int8, made from models/tiny by calibration/make-tiny-int8.sh):
//! it validates against the FP32 PyTorch goldens under the INT8 tolerance and generates on
//! ONNX Runtime's CPU provider and on tract; its manifest shares the FP32 graphs of models/tiny
//! through `base`, whose path rules are checked here; `bench` compares it with the FP32 set for
//! speed and fidelity; `idpatch calibrate` records what calibration/quantize.py reads.

#![cfg(all(feature = "ort", feature = "tract"))]

mod common;

use std::path::{Path, PathBuf};

use common::{json_lines, root, tiny_dir};
use idpatch::manifest::{Checksums, ModelSet, Role};
use idpatch::validate::default_tolerance;

fn int8_dir() -> PathBuf {
    root().join("models/tiny-int8")
}

fn ort_lib() -> String {
    std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| {
        panic!(
            "ORT_DYLIB_PATH is not set: run scripts/test.sh, or scripts/fetch-onnxruntime.sh and \
             export ORT_DYLIB_PATH=$PWD/target/onnxruntime/libonnxruntime.so.1.31.1"
        )
    })
}

fn idpatch(args: &[&str]) -> (i32, String, String) {
    common::run(args)
}

#[test]
fn int8_set_shares_the_fp32_graphs_and_quantizes_the_denoisers() {
    let set = ModelSet::open(&int8_dir(), Checksums::Verify).unwrap();
    let tiny = ModelSet::open(&tiny_dir(), Checksums::Verify).unwrap();
    assert_eq!(set.manifest.precision, "int8");
    assert_eq!(set.manifest.base.as_deref(), Some("tiny"));
    for role in Role::ALL {
        let (entry, fp32) = (set.entry(role).unwrap(), tiny.entry(role).unwrap());
        // Goldens are always the FP32 set's: the PyTorch outputs.
        assert_eq!(
            entry.golden.as_deref(),
            fp32.golden
                .as_ref()
                .map(|g| format!("../tiny/{g}"))
                .as_deref()
        );
        if matches!(role, Role::Unet | Role::Controlnet) {
            assert_eq!(entry.precision, "int8", "{role}");
            assert!(!entry.file.starts_with(".."), "{role}: {}", entry.file);
            assert_ne!(entry.sha256, fp32.sha256);
            assert_eq!(
                entry.inputs, fp32.inputs,
                "{role}: same IO as the FP32 graph"
            );
        } else {
            assert_eq!(entry.file, format!("../tiny/{}", fp32.file), "{role}");
            assert_eq!(entry.sha256, fp32.sha256, "{role}");
        }
    }
    // Only the quantized graphs live in the set's own folder.
    let own: u64 = std::fs::read_dir(int8_dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(own < 12 << 20, "models/tiny-int8 holds {own} bytes");
}

#[test]
fn int8_set_validates_against_the_fp32_goldens_on_ort_cpu_and_tract() {
    let lib = ort_lib();
    let int8 = int8_dir();
    let models = int8.to_str().unwrap();
    for backend in [
        vec!["--backend", "ort", "--ep", "cpu", "--ort-lib", lib.as_str()],
        vec!["--backend", "tract"],
    ] {
        let mut args = vec![
            "validate",
            "--models",
            models,
            "--graphs",
            "unet,controlnet,arcface",
        ];
        args.extend(&backend);
        let (code, stdout, stderr) = idpatch(&args);
        assert_eq!(code, 0, "{backend:?}\n{stdout}\n{stderr}");
        let tolerance = format!("{:.1e}", default_tolerance("int8"));
        for graph in ["unet", "controlnet"] {
            let line = stdout.lines().find(|l| l.starts_with(graph)).unwrap();
            assert!(line.contains(&tolerance) && line.ends_with("ok"), "{line}");
            // Quantized: not the FP32 graph's 1e-6-level agreement.
            let rel: f64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert!(rel > 1e-4, "{graph} agrees to {rel}: is it quantized?");
        }
        let line = stdout.lines().find(|l| l.starts_with("arcface")).unwrap();
        assert!(line.contains("1.0e-4") && line.ends_with("ok"), "{line}");
    }
}

/// Generates with both sets at one seed; returns the final latents (FP32, INT8).
fn latents(backend: &[&str], dir: &Path) -> [Vec<f32>; 2] {
    let layout = tiny_dir().join("examples/layout.json");
    [tiny_dir(), int8_dir()].map(|models| {
        let out = dir.join(format!(
            "{}.png",
            models.file_name().unwrap().to_str().unwrap()
        ));
        let latents = out.with_extension("npy");
        let mut args: Vec<&str> = vec![
            "generate",
            "--layout",
            layout.to_str().unwrap(),
            "--prompt",
            "three friends in a park",
            "--steps",
            "6",
            "--seed",
            "3",
            "--models",
            models.to_str().unwrap(),
            "--save-latents",
            latents.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(backend);
        let (code, stdout, stderr) = idpatch(&args);
        assert_eq!(code, 0, "{args:?}\n{stdout}\n{stderr}");
        let png = idpatch::image_io::read_png_text(&out).unwrap();
        let set = png.iter().find(|(k, _)| k == "model_set").unwrap();
        assert_eq!(set.1, models.file_name().unwrap().to_str().unwrap());
        idpatch::npy::read(&latents).unwrap().to_f32_vec()
    })
}

#[test]
fn int8_set_generates_on_ort_cpu_and_tract_close_to_fp32() {
    let lib = ort_lib();
    let dir = tempfile::tempdir().unwrap();
    for backend in [
        vec!["--backend", "ort", "--ep", "cpu", "--ort-lib", lib.as_str()],
        vec!["--backend", "tract"],
    ] {
        let [fp32, int8] = latents(&backend, dir.path());
        assert_ne!(
            fp32, int8,
            "{backend:?}: INT8 latents equal FP32 bit for bit"
        );
        let cosine = idpatch::fidelity::cosine(&fp32, &int8);
        // Measured 0.99..: see calibration/README.md; a broken quantization lands far below.
        assert!(cosine > 0.9, "{backend:?}: final-latent cosine {cosine}");
    }
}

#[test]
fn bench_compares_precisions_for_speed_and_fidelity() {
    let lib = ort_lib();
    let (tiny, int8) = (tiny_dir(), int8_dir());
    let sets = [tiny.to_str().unwrap(), int8.to_str().unwrap()];
    let traces = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = idpatch(&[
        "bench",
        "--compare",
        sets[0],
        sets[1],
        "--backend",
        "ort",
        "--ort-lib",
        &lib,
        "--graphs",
        "unet",
        "--warmup",
        "1",
        "--runs",
        "2",
        "--profile",
        traces.path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines = json_lines(&stdout);
    let precisions: Vec<&str> = lines[..2]
        .iter()
        .map(|l| l["precision"].as_str().unwrap())
        .collect();
    assert_eq!(precisions, ["fp32", "int8"]);
    assert!(lines[2]["ratio_of_medians"].as_f64().unwrap() > 0.0);
    // ONNX Runtime's profiler: the timed runs only (not the warm-up), every kernel counted once,
    // the trace kept under a/ and b/; integer kernels only in the quantized graph.
    let mut op_names = Vec::new();
    for (line, slot) in lines[..2].iter().zip(["a", "b"]) {
        let profile = &line["profile"];
        assert_eq!(profile["runs"], 2, "{profile}");
        let trace = PathBuf::from(profile["file"].as_str().unwrap());
        assert_eq!(trace.parent().unwrap(), traces.path().join(slot));
        assert!(trace.is_file());
        let ops = profile["ops"].as_array().unwrap();
        let share: f64 = ops.iter().map(|o| o["share"].as_f64().unwrap()).sum();
        assert!((share - 1.0).abs() < 1e-9, "{share}");
        let per_run: f64 = ops.iter().map(|o| o["ms_per_run"].as_f64().unwrap()).sum();
        let kernel = profile["kernel_ms_per_run"].as_f64().unwrap();
        assert!(
            kernel > 0.0 && (per_run - kernel).abs() < 1e-6 * kernel,
            "{profile}"
        );
        op_names.push(
            ops.iter()
                .map(|o| o["op"].as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
        );
    }
    let integer = |names: &[String]| names.iter().any(|n| n.starts_with("QLinear"));
    assert!(!integer(&op_names[0]), "{:?}", op_names[0]);
    assert!(integer(&op_names[1]), "{:?}", op_names[1]);

    let (code, stdout, stderr) = idpatch(&[
        "bench",
        "--fidelity",
        "--compare",
        sets[0],
        sets[1],
        "--backend",
        "ort",
        "--ort-lib",
        &lib,
        "--graphs",
        "unet,controlnet,text_encoder",
        "--seeds",
        "2",
        "--steps",
        "3",
        "--height",
        "128",
        "--width",
        "128",
        "--people",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines = json_lines(&stdout);
    let graph = |name: &str| lines.iter().find(|l| l["graph"] == name).unwrap().clone();
    // The shared FP32 text encoder gives identical outputs; the quantized graphs do not.
    for output in graph("text_encoder")["outputs"].as_array().unwrap() {
        assert_eq!(output["max_abs_err"].as_f64().unwrap(), 0.0);
    }
    for name in ["unet", "controlnet"] {
        for output in graph(name)["outputs"].as_array().unwrap() {
            let cosine = output["cosine"].as_f64().unwrap();
            assert!(output["max_rel_err"].as_f64().unwrap() > 0.0 && cosine < 1.0 && cosine > 0.9);
        }
    }
    let generations: Vec<_> = lines
        .iter()
        .filter(|l| l.get("generation").is_some())
        .collect();
    assert_eq!(generations.len(), 2);
    for g in &generations {
        let g = &g["generation"];
        assert_eq!(g["face_similarity"].as_array().unwrap().len(), 2);
        let cosine = g["latent_cosine"].as_f64().unwrap();
        assert!(cosine > 0.9 && cosine < 1.0, "{g}");
        assert!(g["psnr_db"].as_f64().unwrap() > 10.0, "{g}");
    }
    let summary = lines.last().unwrap();
    assert_eq!(summary["seeds"], 2);
    assert!(summary["face_similarity_mean"].as_f64().unwrap() > 0.0);
}

#[test]
fn fidelity_refuses_what_it_cannot_honour() {
    let tiny = tiny_dir();
    let t = tiny.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["bench", "--fidelity"],
            "--fidelity: needs --compare A B",
        ),
        (
            vec!["bench", "--fidelity", "--compare", t, t, "--runs", "3"],
            "--runs: does not apply",
        ),
        (
            vec!["bench", "--fidelity", "--compare", t, t, "--pipeline"],
            "--pipeline: cannot be combined",
        ),
        (
            vec!["bench", "--fidelity", "--compare", t, t, "--seeds", "0"],
            "--seeds: must be at least 1",
        ),
        (vec!["bench", "--seeds", "2"], "--seeds: needs --fidelity"),
        (
            vec!["bench", "--fidelity", "--compare", t, t, "--profile", "p"],
            "--profile: profiles single graphs; cannot be combined with --fidelity",
        ),
        (
            vec!["bench", "--pipeline", "--backend", "ort", "--profile", "p"],
            "--profile: profiles single graphs; cannot be combined with --pipeline",
        ),
        (
            vec!["bench", "--profile", "p", "--warmup", "1", "--runs", "1000"],
            "--runs: with --profile, --warmup and --runs together may be at most 1000 (got 1001)",
        ),
        (
            vec!["bench", "--graphs", "unet", "--profile", "p"],
            "--profile: is ONNX Runtime's profiler; configuration tract runs on tract",
        ),
        (
            vec!["bench", "--compare", "ort-cpu", "tract", "--profile", "p"],
            "--profile: is ONNX Runtime's profiler; configuration tract runs on tract",
        ),
        (
            vec!["bench", "--backend", "ort", "--profile", "/proc/idpatch"],
            "--profile: /proc/idpatch: cannot write traces there",
        ),
    ] {
        let (code, _, stderr) = idpatch(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    }
}

/// A models folder holding a link to the tiny set and a copy of the INT8 set's own files.
fn models_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(tiny_dir(), dir.path().join("tiny")).unwrap();
    let copy = dir.path().join("q");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(int8_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    dir
}

fn open_with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<ModelSet, String> {
    let folder = models_folder();
    let path = folder.path().join("q/manifest.json");
    let mut manifest: serde_json::Value = common::read_json(&path);
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_string(&manifest).unwrap()).unwrap();
    ModelSet::open(&folder.path().join("q"), Checksums::Verify).map_err(|e| e.to_string())
}

#[test]
fn tensorrt_refuses_a_graph_quantized_with_uint8_activations() {
    let folder = models_folder();
    let path = folder.path().join("q/manifest.json");
    let mut manifest: serde_json::Value = common::read_json(&path);
    assert_eq!(
        manifest["graphs"]["unet"]["quantization"]["activations"],
        "int8 per-tensor symmetric"
    );
    manifest["graphs"]["unet"]["quantization"]["activations"] = "uint8 per-tensor symmetric".into();
    std::fs::write(&path, serde_json::to_string(&manifest).unwrap()).unwrap();
    let set = ModelSet::open(&folder.path().join("q"), Checksums::Verify).unwrap();
    assert!(set.entry(Role::Unet).unwrap().has_uint8_activations());
    assert!(!set.entry(Role::Controlnet).unwrap().has_uint8_activations());
    // Refused before the provider is asked for, so the CPU library shows it too.
    let lib = ort_lib();
    let q = folder.path().join("q");
    let (code, _, stderr) = idpatch(&[
        "validate",
        "--models",
        q.to_str().unwrap(),
        "--backend",
        "ort",
        "--ep",
        "tensorrt",
        "--ort-lib",
        &lib,
        "--graphs",
        "unet",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("graph unet was quantized with uint8 activations")
            && stderr.contains("--activation-type int8"),
        "{stderr}"
    );
}

/// A change made to the INT8 set's manifest before opening it.
type ManifestEdit = Box<dyn FnOnce(&mut serde_json::Value)>;

#[test]
fn base_paths_stay_inside_the_models_folder() {
    open_with(|_| {}).unwrap();
    let cases: Vec<(ManifestEdit, &str)> = vec![
        (
            Box::new(|m| m["base"] = "../tiny".into()),
            "base \"../tiny\" must be the name of a folder beside the set",
        ),
        (
            Box::new(|m| m["base"] = "a/b".into()),
            "base \"a/b\" must be the name of a folder beside the set",
        ),
        (
            Box::new(|m| m["base"] = "missing".into()),
            "base \"missing\": folder",
        ),
        (
            Box::new(|m| {
                m["graphs"]["vae_decoder"]["file"] = "../tiny/../tiny/vae_decoder.onnx".into()
            }),
            "leaves the set directory (`..`) other than into `../<base>/`",
        ),
        (
            Box::new(|m| m["graphs"]["vae_decoder"]["file"] = "../other/vae_decoder.onnx".into()),
            "graph vae_decoder: file \"../other/vae_decoder.onnx\" leaves the set directory",
        ),
        (
            Box::new(|m| m["graphs"]["vae_decoder"]["file"] = "../tiny".into()),
            "names no file in the set",
        ),
        (
            Box::new(|m| {
                m.as_object_mut().unwrap().remove("base");
            }),
            "leaves the set directory (`..`)",
        ),
        (
            Box::new(|m| m["graphs"]["unet"]["precision"] = "int4".into()),
            "graph unet: precision is \"int4\"; must be one of fp32, fp16, int8",
        ),
        (
            Box::new(|m| m["precision"] = "bf16".into()),
            "precision is \"bf16\"; must be one of fp32, fp16, int8",
        ),
    ];
    for (edit, needle) in cases {
        let err = open_with(edit).unwrap_err();
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
}

#[test]
fn calibrate_records_both_sequence_lengths_within_its_bound() {
    let lib = ort_lib();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("calib");
    let layout = root().join("calibration/layouts/00_512x512_1p.json");
    let base: Vec<String> = [
        "calibrate",
        "--models",
        tiny_dir().to_str().unwrap(),
        "--layouts",
        layout.to_str().unwrap(),
        "--generations",
        "2",
        "--steps",
        "5",
        "--samples-per-generation",
        "2",
        "--backend",
        "ort",
        "--ort-lib",
        &lib,
    ]
    .map(String::from)
    .to_vec();
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    // Too small a bound: refused from the plan, before anything runs or is written.
    let args = with(&["--out", out.to_str().unwrap(), "--max-bytes", "1M"]);
    let (code, _, stderr) = common::run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--max-bytes: the plan records up to"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let args = with(&["--out", out.to_str().unwrap()]);
    let (code, stdout, stderr) = common::run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let index: serde_json::Value = common::read_json(&out.join("calibration.json"));
    assert_eq!(index["format"], 1);
    assert_eq!(index["complete"], true);
    let tiny = ModelSet::open(&tiny_dir(), Checksums::Skip).unwrap();
    assert_eq!(
        index["graphs"]["unet"],
        tiny.entry(Role::Unet).unwrap().sha256.as_str()
    );
    let records = index["records"].as_array().unwrap();
    // 2 generations x 2 steps x 2 graphs.
    assert_eq!(records.len(), 8);
    for graph in ["unet", "controlnet"] {
        let lengths: Vec<u64> = records
            .iter()
            .filter(|r| r["graph"] == graph)
            .map(|r| r["sequence"].as_u64().unwrap())
            .collect();
        assert!(
            lengths.contains(&77) && lengths.contains(&(77 + 16)),
            "{graph}: {lengths:?}"
        );
    }
    let spec = &tiny.entry(Role::Unet).unwrap().inputs;
    let mut bytes = 0;
    for record in records.iter().filter(|r| r["graph"] == "unet") {
        let inputs = record["inputs"].as_object().unwrap();
        assert_eq!(inputs.len(), spec.len());
        for s in spec {
            let file = out.join(inputs[&s.name].as_str().unwrap());
            let tensor = idpatch::npy::read(&file).unwrap();
            assert!(
                s.accepts_shape(tensor.shape()),
                "{}: {:?}",
                s.name,
                tensor.shape()
            );
        }
    }
    for entry in walk(&out) {
        bytes += std::fs::metadata(&entry).unwrap().len();
    }
    let index_len = std::fs::metadata(out.join("calibration.json"))
        .unwrap()
        .len();
    assert_eq!(index["bytes"].as_u64().unwrap(), bytes - index_len);
    // A second run into the same, now non-empty, folder is refused.
    let (code, _, stderr) = common::run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 2);
    assert!(stderr.contains("exists and is not empty"), "{stderr}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
