"""`export.py --from-pretrained` on stand-in checkpoints the test writes in the released formats
(standins.py): the exported sets validate with `idpatch validate` and their graphs reproduce what
the stand-in modules compute through diffusers' and transformers' own calls; `--variant fp16`
reads the `*.fp16.safetensors` files; exporting one graph builds and reads nothing else.

Needs torch, diffusers, transformers, onnx, onnxruntime, open_clip (target/refenv), the idpatch
binary (IDPATCH_BIN, default target/debug/idpatch) and the ONNX Runtime library for the FP16 set
(ORT_DYLIB_PATH, default target/onnxruntime/libonnxruntime.so.1.31.1: scripts/fetch-onnxruntime.sh).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import standins  # noqa: E402  (puts exporter-specs on the path)

import export  # noqa: E402

ROOT = standins.ROOT
GRAPHS = export.GRAPH_ORDER
VARIANT_GRAPHS = ["text_encoder", "text_encoder_2", "unet", "controlnet", "vae_decoder"]


def idpatch_binary() -> pathlib.Path:
    binary = pathlib.Path(os.environ.get("IDPATCH_BIN", ROOT / "target" / "debug" / "idpatch"))
    if not binary.is_file():
        raise AssertionError(f"{binary} not built (cargo build, or set IDPATCH_BIN)")
    return binary


def ort_library() -> pathlib.Path:
    library = pathlib.Path(os.environ.get("ORT_DYLIB_PATH", ROOT / "target" / "onnxruntime" / "libonnxruntime.so.1.31.1"))
    if not library.is_file():
        raise AssertionError(f"{library} missing: run scripts/fetch-onnxruntime.sh (or set ORT_DYLIB_PATH)")
    return library


def run_export(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "exporter-specs" / "export.py"), *arguments]
    return subprocess.run(command, capture_output=True, text=True)


def main_in_process(*arguments: str) -> tuple[int, str]:
    """export.main in this process: (exit code, stderr)."""
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            code = export.main(list(arguments))
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
    return code, stderr.getvalue()


def graph_errors(folder: pathlib.Path, name: str, modules: dict) -> float:
    """Largest |graph - stand-in| over the graph's outputs, relative to the largest reference value,
    on the golden inputs the exporter wrote."""
    import onnxruntime as ort

    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["graphs"][name]
    golden = folder / entry["golden"]
    inputs = {t["name"]: np.load(golden / f"input.{t['name']}.npy") for t in entry["inputs"]}
    expected = standins.reference_outputs(name, modules, inputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(folder / entry["file"]), options, providers=["CPUExecutionProvider"])
    feed = {m.name: inputs[m.name].astype(np.float16) if m.type == "tensor(float16)" else inputs[m.name]
            for m in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, feed)))
    scale = max(float(np.abs(v).max()) for v in expected.values())
    return max(float(np.abs(got[k].astype(np.float32) - v).max()) for k, v in expected.items()) / scale


class FromPretrainedTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.TemporaryDirectory()
        root = cls.dir = pathlib.Path(cls.scratch.name)
        default, fp16 = standins.diffusers_modules(seed=1), standins.diffusers_modules(seed=2)
        cls.default, cls.fp16 = default, standins.rounded_to_fp16(fp16)
        cls.sdxl, cls.controlnet = root / "sdxl", root / "ControlNetModel"
        standins.write_sdxl(cls.sdxl, default, fp16, root)
        standins.write_controlnet(cls.controlnet, default, fp16)
        # As the fp16-only mirrors of SDXL checkpoints ship it.
        cls.sdxl_fp16_only = root / "sdxl-fp16"
        standins.write_sdxl(cls.sdxl_fp16_only, None, fp16, root)
        cls.id_patch, cls.arcface = root / "id-patch.bin", root / "recognition_arcface_ir_se50.pth"
        resamplers = standins.write_id_patch(cls.id_patch, seed=3)
        others = resamplers | {"arcface": standins.write_arcface(cls.arcface, seed=4)}
        cls.default |= others
        cls.fp16 |= others
        cls.released = ["--from-pretrained", "--controlnet", str(cls.controlnet), "--id-patch", str(cls.id_patch),
                        "--arcface", str(cls.arcface)]
        cls.env = dict(os.environ, IDPATCH_HOME=str(root / "idpatch-home"))

    @classmethod
    def tearDownClass(cls):
        cls.scratch.cleanup()

    def export_fp32(self) -> pathlib.Path:
        out = self.dir / "set-fp32"
        if not (out / "manifest.json").exists():
            run = run_export(*self.released, "--sdxl", str(self.sdxl), "--golden", "--no-check", "--out", str(out))
            self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        return out

    def test_fp32_set_validates_and_reproduces_the_standins(self):
        out = self.export_fp32()
        validate = subprocess.run([str(idpatch_binary()), "validate", "--models", str(out)],
                                  capture_output=True, text=True, env=self.env)
        self.assertEqual(validate.returncode, 0, validate.stdout + validate.stderr)
        for name in GRAPHS:
            self.assertIn(name, validate.stdout)
            # The face detector comes from the facenet-pytorch wheel, not from the stand-ins;
            # `validate` above compared it with its PyTorch goldens.
            if not name.startswith("face_detector_"):
                self.assertLess(graph_errors(out, name, self.default), 1e-4, name)
        manifest = json.loads((out / "manifest.json").read_text())
        config = manifest["config"]
        self.assertEqual((config["text_dim_1"], config["text_dim_2"], config["pooled_dim"]), (32, 32, 24))
        self.assertEqual((config["cross_attention_dim"], config["down_residuals"], config["latent_channels"]), (64, 9, 4))
        scheduler = json.loads((self.sdxl / "scheduler" / "scheduler_config.json").read_text())
        self.assertEqual(manifest["scheduler"], scheduler)
        from tokenizers import Tokenizer
        from transformers import CLIPTokenizer

        prompt = "two friends on a pier at sunset, film photo"
        for name, pad in (("tokenizer", 49407), ("tokenizer_2", 0)):
            written = Tokenizer.from_file(str(out / manifest["tokenizers"][name]["file"]))
            self.assertEqual(written.padding["pad_id"], pad, name)
            folder = CLIPTokenizer.from_pretrained(self.sdxl / name)
            expected = folder(prompt, padding="max_length", max_length=77, truncation=True).input_ids
            self.assertEqual(written.encode(prompt).ids, expected, name)

    def test_fp16_variant_set_reads_the_fp16_files(self):
        out = self.dir / "set-fp16"
        shutil.copytree(self.export_fp32(), out)
        run = run_export(*self.released, "--sdxl", str(self.sdxl_fp16_only), "--variant", "fp16", "--precision", "fp16",
                         "--graphs", ",".join(VARIANT_GRAPHS), "--golden", "--no-check", "--out", str(out))
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        validate = subprocess.run([str(idpatch_binary()), "validate", "--models", str(out), "--backend", "ort", "--ep", "cpu",
                                   "--ort-lib", str(ort_library())], capture_output=True, text=True, env=self.env)
        self.assertEqual(validate.returncode, 0, validate.stdout + validate.stderr)
        manifest = json.loads((out / "manifest.json").read_text())
        for name in VARIANT_GRAPHS:
            entry = manifest["graphs"][name]
            self.assertEqual(entry["precision"], "fp32" if name == "vae_decoder" else "fp16", name)
            # The fp16 files hold other weights than the default ones: only they reproduce the graph.
            self.assertLess(graph_errors(out, name, self.fp16), 2e-2, name)
            self.assertGreater(graph_errors(out, name, self.default), 0.1, name)

    def test_fp16_only_folder_without_variant_is_refused(self):
        code, stderr = main_in_process(*self.released, "--sdxl", str(self.sdxl_fp16_only), "--graphs", "unet",
                                       "--out", str(self.dir / "refused"))
        self.assertEqual(code, 2)
        self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)
        self.assertIn("only fp16 variant weights", stderr)
        self.assertIn("pass --variant fp16", stderr)
        self.assertFalse((self.dir / "refused").exists(), "nothing is written for a refused export")

    def test_variant_no_folder_has_is_refused(self):
        code, stderr = main_in_process(*self.released, "--sdxl", str(self.sdxl), "--variant", "bf16",
                                       "--graphs", "vae_decoder", "--out", str(self.dir / "refused-bf16"))
        self.assertEqual(code, 2)
        self.assertIn("--variant bf16: none of", stderr)

    def test_variant_needs_from_pretrained_and_a_plain_name(self):
        code, stderr = main_in_process("--random", "--variant", "fp16", "--out", str(self.dir / "x"))
        self.assertEqual(code, 2)
        self.assertIn("--variant needs --from-pretrained", stderr)
        code, stderr = main_in_process(*self.released, "--sdxl", str(self.sdxl), "--variant", "../fp16", "--out", str(self.dir / "x"))
        self.assertEqual(code, 2)
        self.assertIn("a variant is 1 to 32 letters", stderr)

    def test_missing_component_folder_is_one_line(self):
        broken = self.dir / "sdxl-no-vae"
        shutil.copytree(self.sdxl, broken)
        shutil.rmtree(broken / "vae")
        code, stderr = main_in_process(*self.released, "--sdxl", str(broken), "--graphs", "vae_decoder",
                                       "--out", str(self.dir / "refused-vae"))
        self.assertEqual(code, 2)
        self.assertIn("vae_decoder:", stderr)
        self.assertIn("config.json is missing", stderr)

    def test_controlnet_alone_reads_only_the_unet_config(self):
        from diffusers import UNet2DConditionModel

        # The UNet's weights are gone; building or loading a UNet in any way fails the test.
        sdxl = self.dir / "sdxl-unet-config-only"
        shutil.copytree(self.sdxl, sdxl)
        for path in (sdxl / "unet").glob("*.safetensors"):
            path.unlink()
        out = self.dir / "controlnet-only"
        refuse = mock.patch.object(UNet2DConditionModel, "__init__", autospec=True, side_effect=AssertionError("UNet built"))
        with refuse, mock.patch.object(UNet2DConditionModel, "from_pretrained", autospec=True, side_effect=AssertionError("UNet loaded")):
            code, stderr = main_in_process(*self.released, "--sdxl", str(sdxl), "--graphs", "controlnet", "--golden",
                                           "--out", str(out))
        self.assertEqual(code, 0, stderr)
        self.assertLess(graph_errors(out, "controlnet", self.default), 1e-4)
        config = json.loads((out / "manifest.json").read_text())["config"]
        self.assertEqual((config["cross_attention_dim"], config["text_dim_1"], config["text_dim_2"]), (64, 32, 32))

    def test_random_graphs_build_only_their_modules(self):
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModelWithProjection

        args = export.parse_args(["--random", "--size", "tiny", "--out", str(self.dir / "unused")])
        params = json.loads((ROOT / "exporter-specs" / "sizes.json").read_text())["tiny"]
        with mock.patch.object(UNet2DConditionModel, "__init__", autospec=True, side_effect=AssertionError("UNet built")):
            modules = export.build_graph_modules(args, params, ["controlnet"])
        self.assertEqual(list(modules), ["controlnet"])
        with mock.patch.object(CLIPTextModelWithProjection, "__init__", autospec=True, side_effect=AssertionError("text_encoder_2 built")):
            modules = export.build_graph_modules(args, params, ["text_encoder"])
        self.assertEqual(list(modules), ["text_encoder"])


if __name__ == "__main__":
    unittest.main()
