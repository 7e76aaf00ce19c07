//! AUTOMATIC1111's `parameters` PNG text. Expected: tests/reference/a1111.py, which lays out
//! A1111's infotext for each case as its `create_infotext` does, parses it back with A1111's
//! `parse_generation_parameters` (restated from its source) and with sd-parsers 0.6 (PyPI), into
//! tests/data/a1111/reference.json.

mod common;

use idpatch::infotext::{a1111_sampler, Infotext};
use idpatch::scheduler::SchedulerKind;
use serde_json::Value;

fn reference() -> Value {
    common::read_json(&common::test_data("a1111").join("reference.json"))
}

fn infotext(input: &Value) -> Infotext<'_> {
    let s = |k: &str| input[k].as_str().unwrap();
    let f = |k: &str| input[k].as_f64().unwrap();
    let u = |k: &str| input[k].as_u64().unwrap();
    Infotext {
        prompt: s("prompt"),
        negative_prompt: s("negative_prompt"),
        steps: u("steps") as usize,
        scheduler: s("scheduler").parse::<SchedulerKind>().unwrap(),
        karras: input["karras"].as_bool().unwrap(),
        guidance: f("guidance"),
        seed: u("seed"),
        width: u("width") as u32,
        height: u("height") as u32,
        model_set_digest: s("model_set_digest"),
        model: s("model"),
        controlnet_scale: f("controlnet_scale"),
        control_guidance_start: f("control_guidance_start"),
        control_guidance_end: f("control_guidance_end"),
        id_injection_ratio: f("id_injection_ratio"),
        people: u("people") as usize,
        backend: s("backend"),
    }
}

#[test]
fn parameters_text_is_laid_out_as_a1111_writes_it() {
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let text = infotext(&case["input"]).parameters();
        assert_eq!(text, case["parameters"].as_str().unwrap());
    }
}

// What A1111's own parser reads from our text is what was set: prompt, negative prompt, every
// A1111 field and every ID-Patch field.
#[test]
fn a1111_reads_back_every_setting() {
    for case in reference()["cases"].as_array().unwrap() {
        let input = &case["input"];
        let info = infotext(input);
        let parsed = case["a1111"].as_object().unwrap();
        let get = |k: &str| parsed.get(k).and_then(Value::as_str);
        assert_eq!(get("Prompt"), Some(info.prompt));
        assert_eq!(get("Negative prompt"), Some(info.negative_prompt));
        assert_eq!(get("Sampler"), Some(a1111_sampler(info.scheduler)));
        assert_eq!(get("Size-1"), Some(info.width.to_string().as_str()));
        assert_eq!(get("Size-2"), Some(info.height.to_string().as_str()));
        assert_eq!(get("Model hash"), Some(&info.model_set_digest[..10]));
        assert_eq!(get("Schedule type").is_some(), info.karras);
        for (key, value) in info.pairs() {
            if key != "Size" {
                assert_eq!(get(key), Some(value.as_str()), "{key}");
            }
        }
        // The numbers read back as the values set.
        let number = |k: &str| get(k).unwrap().parse::<f64>().unwrap();
        assert_eq!(number("CFG scale"), info.guidance);
        assert_eq!(number("ControlNet scale"), info.controlnet_scale);
        assert_eq!(number("ID injection ratio"), info.id_injection_ratio);
        assert_eq!(get("Seed").unwrap().parse::<u64>().unwrap(), info.seed);
    }
}

// sd-parsers, as image browsers read PNGs, finds the A1111 generator, the prompts, the sampler,
// its parameters and the model hash. (It splits on every ',' and ':', so it drops quoted values
// such as the model name "set, with comma"; A1111's parser reads them.)
#[test]
fn sd_parsers_reads_the_generation() {
    for case in reference()["cases"].as_array().unwrap() {
        let info = infotext(&case["input"]);
        let read = &case["sd_parsers"];
        assert_eq!(read["generator"], "AUTOMATIC1111");
        assert_eq!(read["prompt"], info.prompt);
        assert_eq!(read["negative_prompt"], info.negative_prompt);
        assert_eq!(read["sampler"], a1111_sampler(info.scheduler));
        assert_eq!(read["parameters"]["steps"], info.steps.to_string());
        assert_eq!(read["parameters"]["seed"], info.seed.to_string());
        assert_eq!(read["parameters"]["cfg_scale"], info.guidance.to_string());
        let karras = read["parameters"].get("scheduler").map(|s| s == "Karras");
        assert_eq!(karras.unwrap_or(false), info.karras);
        assert_eq!(read["model_hash"], &info.model_set_digest[..10]);
    }
}

// `generate` writes the chunk, with the settings given under diffusers' flag names, beside the
// existing chunks.
#[cfg(feature = "tract")]
#[test]
fn generate_writes_the_parameters_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let layout = common::tiny_dir().join("examples/layout.json");
    let output = common::command()
        .args(["generate", "--layout"])
        .arg(&layout)
        .args([
            "--prompt",
            "two friends, smiling",
            "--negative-prompt",
            "blurry",
        ])
        .args(["--num-inference-steps", "2", "--guidance-scale", "3.5"])
        .args(["--controlnet-conditioning-scale", "0.6", "--seed", "9"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let (code, _, stderr) = common::code_stdout_stderr(output);
    assert_eq!(code, 0, "{stderr}");
    let text = idpatch::image_io::read_png_text(&out).unwrap();
    let get = |k: &str| {
        text.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} chunk in {text:?}"))
    };
    let digest = get("model_set_digest");
    let expected = Infotext {
        prompt: "two friends, smiling",
        negative_prompt: "blurry",
        steps: 2,
        scheduler: SchedulerKind::Euler,
        karras: false,
        guidance: 3.5,
        seed: 9,
        // models/tiny/examples/layout.json: 192x128, three people.
        width: 192,
        height: 128,
        model_set_digest: &digest,
        model: "tiny",
        controlnet_scale: 0.6,
        control_guidance_start: 0.0,
        control_guidance_end: 1.0,
        id_injection_ratio: 0.8,
        people: 3,
        backend: "tract",
    };
    assert_eq!(get("parameters"), expected.parameters());
    assert!(get("parameters").contains("\nSteps: 2, Sampler: Euler, CFG scale: 3.5, Seed: 9, "));
    // The existing chunks stay, with the values the diffusers-named flags set.
    assert_eq!(get("steps"), "2");
    assert_eq!(get("guidance"), "3.5");
    assert_eq!(get("controlnet_scale"), "0.6");
}
