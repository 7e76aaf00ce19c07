"""Reference run of the whole ID-Patch pipeline on the tiny graph set, in PyTorch (run by hand).

Rebuilds the tiny set's PyTorch modules exactly as models/tiny was exported (exporter-specs/export.py,
random weights from the manifest's seed), proves it by reproducing every committed golden output
of models/tiny/golden to 1e-5, then runs the pipeline the way ID-Patch's SDXL pipeline does:

- faces: scikit-image SimilarityTransform + cv2.warpAffine onto the ArcFace template where the
  layout gives face_keypoints, the 112x112 crop as is otherwise; BGR, x/255*2-1;
- ArcFace (one batch), patch_proj, prompt_proj; negative ID tokens = prompt_proj(zeros);
- condition: OpenCV skeleton + numpy patch compositing (tests/reference/condition.py);
- transformers' CLIPTokenizer (pad <|endoftext|> and "!"), both text encoders for the prompt and the
  negative prompt, hidden states side by side, pooled = text_encoder_2's text_embeds;
- ID tokens spliced after the 77 text tokens from step i >= N * (1 - ratio) on;
- diffusers' EulerDiscreteScheduler from the manifest's scheduler config; latents = noise *
  init_noise_sigma; classifier-free guidance only when guidance > 1 (diffusers'
  `do_classifier_free_guidance`): batch [uncond, cond] then, the conditional half alone (batch 1,
  negative prompt and negative ID tokens unused) otherwise; ControlNet residuals into the UNet, the
  ControlNet at scale `controlnet_scale * controlnet_keep[i]` with diffusers' control guidance window;
- VAE decode of latents / 0.13025, (x / 2 + 0.5).clamp(0, 1).

Three cases (CASES): ID-Patch's defaults (CFG 5.5, ControlNet on every step), guidance 1 (no CFG),
and CFG with a control window [0.3, 0.8] that skips steps at both ends.

Inputs (tests/data/pipeline/): layout.json, face_*.png, init_noise.npy (numpy default_rng(20250101)
standard normals); the layout's second face is ../face/upright.png with its face_keypoints.
Outputs, per case (the first in tests/data/pipeline, the others in a folder named after the case):
latents.npy (final latents before VAE scaling, float32 (1,4,8,12)), image.npy (float32 (1,3,64,96)
in [0,1]), image.png (numpy round-half-even of x*255); then condition.npy and reference.json
(parameters of every case with its keep list, library versions), and controlnet_keep.json (keep
lists of KEEP_CASES, one per line, for the runtime's unit test). A case whose latents are already committed must be reproduced to 1e-6 first.
"""

import importlib.util
import json
import pathlib
import sys
import tempfile

import cv2
import numpy as np
import skimage
import skimage.data
import torch
from skimage.transform import SimilarityTransform

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "pipeline"
TINY = ROOT / "models" / "tiny"
sys.path.insert(0, str(ROOT / "exporter-specs"))
sys.path.insert(0, str(ROOT / "tests" / "reference"))

import export  # noqa: E402
from condition import composite, draw_skeleton, standing  # noqa: E402
from face import TEMPLATE, arcface_input  # noqa: E402

WIDTH, HEIGHT = 96, 64
PROMPT = "three friends posing for a photo in a sunny park, smiling, high detail"
NEGATIVE = "blurry, low quality"
NOISE_SEED = 20250101
_BASE = {"steps": 7, "controlnet_scale": 0.8, "id_injection_ratio": 0.8}
# The first case's outputs sit in tests/data/pipeline itself; the others in a folder each.
CASES = [
    # ID-Patch's guidance: CFG on, ControlNet on every step.
    {"name": "cfg", "dir": "", "negative_prompt": NEGATIVE, "guidance": 5.5,
     "control_guidance_start": 0.0, "control_guidance_end": 1.0, **_BASE},
    # guidance 1: no CFG, batch 1, the conditional half alone.
    {"name": "guidance_1", "dir": "guidance_1", "negative_prompt": "", "guidance": 1.0,
     "control_guidance_start": 0.0, "control_guidance_end": 1.0, **_BASE},
    # CFG with a control window that drops steps 0-2 and 5-6 of 7.
    {"name": "control_window", "dir": "control_window", "negative_prompt": NEGATIVE, "guidance": 5.5,
     "control_guidance_start": 0.3, "control_guidance_end": 0.8, **_BASE},
]
# (steps, start, end) for the keep-list table the runtime's unit test reads, boundaries included.
KEEP_CASES = [
    (7, 0.3, 0.8), (7, 0.0, 1.0), (7, 0.5, 0.6), (10, 0.2, 0.7), (10, 0.1, 0.3), (3, 0.0, 0.34),
    (50, 0.02, 0.98), (50, 0.1, 0.9), (50, 0.0, 0.5), (30, 0.1, 0.7), (1000, 0.33, 0.66), (1, 0.0, 1.0),
]


def build_modules(manifest):
    source = manifest["source"]
    assert source["kind"] == "random" and "--size tiny" in source["exporter"], source
    with tempfile.TemporaryDirectory() as tmp:
        args = export.parse_args(["--random", "--size", "tiny", "--seed", str(source["seed"]), "--out", tmp])
    torch.manual_seed(args.seed)
    params = json.loads((ROOT / "exporter-specs" / "sizes.json").read_text())["tiny"]
    return export.build_graph_modules(args, params, list(export.GRAPH_ORDER))


def check_goldens(modules, manifest):
    for name, entry in manifest["graphs"].items():
        folder = TINY / entry["golden"]
        inputs = {t["name"]: np.load(folder / f"input.{t['name']}.npy") for t in entry["inputs"]}
        got = export.run_torch(modules[name], entry, inputs)
        for t in entry["outputs"]:
            expected = np.load(folder / f"output.{t['name']}.npy")
            err = np.abs(got[t["name"]] - expected).max() / max(np.abs(expected).max(), 1e-30)
            assert err <= 1e-5, f"{name}.{t['name']}: rebuilt module differs from the golden by {err:.3e}"
        print(f"golden ok: {name}")


def make_inputs():
    """Face crops, the layout and the initial noise (written once; kept if present)."""
    OUT.mkdir(parents=True, exist_ok=True)
    # 112x112 crops used as already aligned ArcFace inputs.
    crops = {
        "face_chelsea.png": cv2.resize(skimage.data.chelsea()[20:220, 60:260], (112, 112), interpolation=cv2.INTER_AREA),
        "face_coffee.png": cv2.resize(skimage.data.coffee()[40:340, 150:450], (112, 112), interpolation=cv2.INTER_AREA),
    }
    for name, rgb in crops.items():
        cv2.imwrite(str(OUT / name), rgb[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    cases = json.loads((ROOT / "tests" / "data" / "face" / "cases.json").read_text())
    upright = cases["cases"]["upright"]

    def pose(cx, top, scale):
        return [[float(np.float32(v)) for v in row] for row in standing(cx, top, scale)]

    layout = {
        "width": WIDTH,
        "height": HEIGHT,
        "people": [
            # Pose-free: only the patch, partly off the left edge.
            {"face": "face_chelsea.png", "position": [18.0, 30.0]},
            # Posed, face aligned from its keypoints; its patch overlaps the next one.
            {"face": "../face/upright.png", "face_keypoints": upright["keypoints"], "keypoints": pose(52.0, 14.0, 4.0)},
            {"face": "face_coffee.png", "keypoints": pose(74.5, 20.0, 3.5)},
        ],
    }
    (OUT / "layout.json").write_text(json.dumps(layout, indent=1) + "\n")
    noise = np.random.default_rng(NOISE_SEED).standard_normal((1, 4, HEIGHT // 8, WIDTH // 8)).astype(np.float32)
    np.save(OUT / "init_noise.npy", noise)


def load_face(path, keypoints):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    if keypoints is None:
        assert img.shape[:2] == (112, 112), path
        aligned = img
    else:
        tform = SimilarityTransform.from_estimate(np.asarray(keypoints, np.float64), TEMPLATE)
        aligned = cv2.warpAffine(np.ascontiguousarray(img), tform.params[:2], (112, 112), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return arcface_input(np.ascontiguousarray(aligned))


def tokenizers():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(TINY / "tokenizer")
    tok_2 = CLIPTokenizer.from_pretrained(TINY / "tokenizer_2", pad_token="!")
    assert tok.pad_token_id == 49407 and tok_2.pad_token_id == 0
    return tok, tok_2


def encode(tok, text):
    return tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def controlnet_keep(num_timesteps, start, end):
    """Per step, 1.0 when the ControlNet counts and 0.0 when it runs at scale 0.

    The expression of diffusers 0.42.1 `StableDiffusionXLControlNetPipeline.__call__`, step "7.1 Create
    tensor stating which controlnets to keep" (pipelines/controlnet/pipeline_controlnet_sd_xl.py lines
    1381-1387), which diffusers keeps inline: step i is kept when i/N >= start and (i+1)/N <= end.
    """
    return [1.0 - float(i / num_timesteps < start or (i + 1) / num_timesteps > end) for i in range(num_timesteps)]


def do_classifier_free_guidance(guidance_scale):
    # diffusers 0.42.1 StableDiffusionXLControlNetPipeline.do_classifier_free_guidance (line 980), for a UNet
    # without time_cond_proj_dim: guidance only above 1; at or below 1 the conditional half runs alone.
    return guidance_scale > 1


def denoise(modules, manifest, case, text, ids, condition, size):
    """The denoising loop of one case; returns the final latents (1, 4, h, w)."""
    (prompt_embeds, pooled), (negative_embeds, negative_pooled) = text
    id_tokens, negative_id_tokens = ids
    height, width = size
    cfg = do_classifier_free_guidance(case["guidance"])
    batch = 2 if cfg else 1
    dim = prompt_embeds.shape[-1]
    cond_full = torch.cat([prompt_embeds, id_tokens.reshape(1, -1, dim)], dim=1)
    if cfg:
        uncond_full = torch.cat([negative_embeds, negative_id_tokens.reshape(1, -1, dim)], dim=1)
        states_text = torch.cat([negative_embeds, prompt_embeds])
        states_full = torch.cat([uncond_full, cond_full])
        text_embeds = torch.cat([negative_pooled, pooled])
    else:
        # Without guidance the negative prompt and the negative ID tokens are never used.
        states_text, states_full, text_embeds = prompt_embeds, cond_full, pooled
    time_ids = torch.tensor([[height, width, 0, 0, height, width]] * batch, dtype=torch.float32)
    control_image = torch.from_numpy(np.stack([condition] * batch))

    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(manifest["scheduler"])
    scheduler.set_timesteps(case["steps"])
    latents = torch.from_numpy(np.load(OUT / "init_noise.npy")) * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    keep = controlnet_keep(len(timesteps), case["control_guidance_start"], case["control_guidance_end"])
    down_residuals = manifest["config"]["down_residuals"]
    for i, t in enumerate(timesteps):
        states = states_text if i < len(timesteps) * (1 - case["id_injection_ratio"]) else states_full
        model_input = scheduler.scale_model_input(torch.cat([latents] * batch), t)
        t_batch = t.reshape(1).expand(batch).to(torch.float32)
        # As diffusers does outside the window: the ControlNet runs at scale 0 (zero residuals).
        scale = torch.tensor([case["controlnet_scale"] * keep[i]], dtype=torch.float32)
        residuals = modules["controlnet"](model_input, t_batch, states, text_embeds, time_ids, control_image, scale)
        assert len(residuals) == down_residuals + 1
        noise_pred = modules["unet"](model_input, t_batch, states, text_embeds, time_ids, *residuals)
        if cfg:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + case["guidance"] * (cond - uncond)
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        print(f"  step {i}: t={float(t):g} batch={batch} sequence={states.shape[1]} keep={keep[i]:g} "
              f"|latents|max={latents.abs().max():.4f}")
    return latents, [float(t) for t in timesteps], keep


def write_outputs(folder, latents, image):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "latents.npy", latents.numpy().astype(np.float32))
    np.save(folder / "image.npy", image.numpy().astype(np.float32))
    rgb = np.round(image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    cv2.imwrite(str(folder / "image.png"), rgb[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])


def check_reproduced(folder, latents):
    """A committed case must come out again as it was (same modules, same noise, same libraries)."""
    path = folder / "latents.npy"
    if path.exists():
        before = np.load(path)
        err = np.abs(latents.numpy() - before).max() / np.abs(before).max()
        print(f"  committed latents reproduced to {err:.3e} relative")
        assert err <= 1e-6, f"{path}: rerun differs from the committed latents by {err:.3e}"


@torch.no_grad()
def main():
    import diffusers
    import transformers

    manifest = json.loads((TINY / "manifest.json").read_text())
    modules = build_modules(manifest)
    check_goldens(modules, manifest)
    if not (OUT / "layout.json").exists():
        make_inputs()
    layout = json.loads((OUT / "layout.json").read_text())
    people = layout["people"]
    height, width = layout["height"], layout["width"]

    faces = np.concatenate([load_face(OUT / p["face"], p.get("face_keypoints")) for p in people])
    embeds = modules["arcface"](torch.from_numpy(faces))[:, None, :]
    patches = modules["patch_proj"](embeds)
    id_tokens = modules["prompt_proj"](embeds)
    negative_id_tokens = modules["prompt_proj"](torch.zeros_like(embeds))

    posed = [np.asarray(p["keypoints"], np.float32) for p in people if "keypoints" in p]
    centres = [p["position"] if "position" in p else np.asarray(p["keypoints"], np.float32)[0, :2] for p in people]
    skeleton = draw_skeleton(height, width, posed)
    condition = composite(skeleton, centres, patches.numpy())

    tok, tok_2 = tokenizers()

    def text(prompt):
        h1 = modules["text_encoder"](encode(tok, prompt))
        h2, pooled = modules["text_encoder_2"](encode(tok_2, prompt))
        return torch.cat([h1, h2], dim=-1), pooled

    cases = []
    for case in CASES:
        print(f"case {case['name']}")
        encoded = (text(PROMPT), text(case["negative_prompt"]) if do_classifier_free_guidance(case["guidance"]) else (None, None))
        latents, timesteps, keep = denoise(
            modules, manifest, case, encoded, (id_tokens, negative_id_tokens), condition, (height, width)
        )
        decoded = modules["vae_decoder"](latents / manifest["config"]["vae_scaling_factor"])
        image = (decoded / 2 + 0.5).clamp(0, 1)
        folder = OUT / case["dir"]
        check_reproduced(folder, latents)
        write_outputs(folder, latents, image)
        cases.append({**case, "timesteps": timesteps, "controlnet_keep": keep,
                      "do_classifier_free_guidance": do_classifier_free_guidance(case["guidance"])})
    np.save(OUT / "condition.npy", condition.astype(np.float32))
    first = cases[0]
    meta = {
        "prompt": PROMPT,
        "negative_prompt": first["negative_prompt"],
        "steps": first["steps"],
        "guidance": first["guidance"],
        "controlnet_scale": first["controlnet_scale"],
        "id_injection_ratio": first["id_injection_ratio"],
        "timesteps": first["timesteps"],
        "cases": cases,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "scikit-image": skimage.__version__,
        },
    }
    (OUT / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    rows = [
        json.dumps({"steps": n, "control_guidance_start": s, "control_guidance_end": e,
                    "keep": [int(k) for k in controlnet_keep(n, s, e)]}, separators=(",", ":"))
        for n, s, e in KEEP_CASES
    ]
    (OUT / "controlnet_keep.json").write_text('{"diffusers": "%s", "cases": [\n%s\n]}\n' % (diffusers.__version__, ",\n".join(rows)))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
