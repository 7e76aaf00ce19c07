#!/usr/bin/env python3
"""Write an INT8 graph set from an FP32 set and calibration data recorded by `idpatch calibrate`.

usage: quantize.py SET CALIB OUT [--method minmax|percentile|entropy] [--percentile 99.999]
                   [--graphs unet,controlnet] [--max-records N] [--holdout K] [--seed 0]
                   [--activations symmetric|asymmetric] [--outputs quantized|float]
                   [--residual-convs int8|float] [--activation-type int8|uint8]

The UNet and ControlNet are quantized with onnxruntime.quantization's static QDQ quantizer
(`QDQQuantizer`): S8S8 (int8 activations and weights), per-channel symmetric weights, per-tensor
activations whose ranges come from the calibration records. Only Conv, MatMul and Gemm nodes with
a weight initializer are quantized (the attention score products between activations stay float),
minus the layers NVIDIA's SDXL INT8 recipe keeps in high precision, matched on the exporter's node
names (module paths): time_embedding, time_emb_proj, add_embedding, conv_in, conv_out and
conv_shortcut (also inside the ControlNet's conditioning embedding). The other graphs are the
source set's: when OUT is a sibling of SET (same parent folder) the manifest declares
`"base": "<SET's folder name>"` and names them `../<SET>/<file>` (nothing is copied); otherwise
they are copied. The INT8 entries point at the source set's FP32 goldens (the PyTorch outputs),
which `idpatch validate` compares with under the INT8 tolerance.

Calibration ranges are collected here, one record at a time, on a copy of the graph whose
candidate tensors are extra outputs (the weights stay in the source files), so memory and disk
stay near one copy of the model: minmax (running min and max), or onnxruntime's HistogramCollector
for percentile (symmetric, 2048 bins) and entropy (128 bins). The choice between them, and the
defaults below, are documented with the measurements in calibration/README.md.

--holdout K keeps the generations g with g % K == K - 1 out of calibration and reports the INT8
graphs' error against FP32 on them (largest error relative to the largest FP32 value, and cosine
similarity), also recorded in the manifest. Everything is deterministic: the same inputs and seed
give byte-identical files.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import signal
import sys
import time

import numpy as np
import onnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from quantize_checks import (  # noqa: E402
    Refused, check_graph_files, check_index, check_manifest, check_out, load_record, sha256_of,
)

QUANTIZED_GRAPHS = ("unet", "controlnet")
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
# NVIDIA ModelOpt's SDXL INT8 recipe keeps these modules in high precision; the exporter's node
# names hold the module path (/unet/down_blocks.1/resnets.0/time_emb_proj/Gemm).
HIGH_PRECISION = ("time_embedding", "time_emb_proj", "add_embedding", "conv_in", "conv_out", "conv_shortcut")
# The ControlNet's 1x1 convolutions that produce its residual outputs.
RESIDUAL_CONVS = ("controlnet_down_blocks", "controlnet_mid_block")
MAX_EXTERNAL = 1 << 30  # graphs above this are written with one external data file
FORMAT = 1


def fail(message: str) -> None:
    print(f"quantize.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_json(path: pathlib.Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        fail(f"{what} {path}: {e}")


# ---------------------------------------------------------------- node selection


def module_path(node) -> list[str]:
    return [part for part in node.name.split("/") if part]


def select_nodes(model, graph: str, residual_convs: str) -> tuple[list[str], dict[str, str]]:
    """Names of the nodes to quantize, and the weight nodes kept float with the reason."""
    initializers = {t.name for t in model.graph.initializer}
    chosen, kept = [], {}
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        parts = module_path(node)
        reason = next((p for p in HIGH_PRECISION if any(p == part for part in parts)), None)
        if reason is None and residual_convs == "float" and any(p in RESIDUAL_CONVS for p in parts):
            reason = "residual output conv"
        if reason is None:
            chosen.append(node.name)
        else:
            kept[node.name] = reason
    if not chosen:
        fail(f"graph {graph}: no Conv, MatMul or Gemm node with a weight initializer to quantize")
    return chosen, kept


def tensors_to_calibrate(model, nodes: list[str], outputs: str) -> list[str]:
    """The activation inputs of the chosen nodes, and their outputs when those are quantized."""
    initializers = {t.name for t in model.graph.initializer}
    wanted = set(nodes)
    names = []
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        candidates = [node.input[0]] + ([node.output[0]] if outputs == "quantized" else [])
        for name in candidates:
            if name and name not in initializers and name not in names:
                names.append(name)
    return names


# ---------------------------------------------------------------- calibration


def augmented_session(source: pathlib.Path, tensors: list[str]):
    """An onnxruntime session on the source graph with `tensors` as extra outputs. Only the graph
    structure is rewritten, in memory; the weights are read from the source's external data files
    where they are (onnxruntime refuses external data reached through a link that leaves the
    model's folder, so the files are neither linked nor copied)."""
    import onnxruntime as ort

    model = onnx.load(source, load_external_data=False)
    outputs = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    # Unoptimised, as onnxruntime's own calibrators run: every calibrated tensor exists as named.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # A model given as bytes reads its external data relative to this folder.
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(source.parent.resolve()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def load_inputs(calib: pathlib.Path, record: dict) -> dict[str, np.ndarray]:
    return load_record(calib, record)


def run_record(session, calib: pathlib.Path, record: dict) -> list:
    """One record through a session; inputs that do not fit the graph are the data's fault."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    inputs = load_inputs(calib, record)
    try:
        return session.run(None, inputs)
    except (RuntimeError, ValueError, ort_errors.Fail, ort_errors.InvalidArgument) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Refused(f"{calib}: a {record['graph']} record (generation {record['generation']}) does not fit "
                      f"the graph: {first}") from None


class RangeCollector:
    """Per-tensor activation ranges over the records, one record at a time."""

    def __init__(self, method: str, percentile: float):
        from onnxruntime.quantization.calibrate import HistogramCollector

        self.method = method
        self.minmax: dict[str, list[float]] = {}
        self.histograms = None
        if method == "percentile":
            self.histograms = HistogramCollector("percentile", True, 2048, 128, percentile, "same")
        elif method == "entropy":
            self.histograms = HistogramCollector("entropy", False, 128, 128, percentile, "same")

    def add(self, values: dict[str, np.ndarray]) -> None:
        if self.histograms is not None:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per call
                self.histograms.collect({k: [v] for k, v in values.items()})
            return
        for name, value in values.items():
            low, high = float(np.min(value)), float(np.max(value))
            seen = self.minmax.setdefault(name, [low, high])
            seen[0], seen[1] = min(seen[0], low), max(seen[1], high)

    def tensors_data(self):
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

        if self.histograms is None:
            ranges = {k: (np.float32(v[0]), np.float32(v[1])) for k, v in self.minmax.items()}
            return TensorsData(CalibrationMethod.MinMax, ranges)
        method = CalibrationMethod.Percentile if self.method == "percentile" else CalibrationMethod.Entropy
        with contextlib.redirect_stdout(io.StringIO()):
            return TensorsData(method, self.histograms.compute_collection_result())


def collect_ranges(source: pathlib.Path, tensors: list[str], records: list[dict], calib: pathlib.Path, args):
    collector = RangeCollector(args.method, args.percentile)
    session = augmented_session(source, tensors)
    names = [o.name for o in session.get_outputs()]
    wanted = set(tensors)
    for record in records:
        values = run_record(session, calib, record)
        collector.add({n: v for n, v in zip(names, values) if n in wanted})
    del session
    return collector.tensors_data()


# ---------------------------------------------------------------- quantization


def quantize_graph(source: pathlib.Path, out: pathlib.Path, nodes: list[str], ranges, args) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    model = onnx.load(source, load_external_data=False)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.external_data_helper.load_external_data_for_model(model, str(source.parent))
    extra = {
        "ActivationSymmetric": args.activations == "symmetric",
        "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": list(WEIGHT_OPS) if args.outputs == "float" else [],
    }
    quantizer = QDQQuantizer(
        model,
        True,  # per-channel weights
        args.weight_bits == 7,  # reduce_range: 7-bit weights
        QuantType.QInt8,  # weights
        QuantType.QUInt8 if args.activation_type == "uint8" else QuantType.QInt8,
        ranges,
        nodes,
        [],
        list(WEIGHT_OPS),
        extra,
    )
    quantizer.quantize_model()
    quantized = quantizer.model.model
    # Shape inference above was for the quantizer; the saved graph declares only its inputs and
    # outputs, as the exporter's graphs do (some inferred intermediate shapes are the traced
    # batch's, which a runtime with its own shape analysis, tract, rejects).
    del quantized.graph.value_info[:]
    quantized.producer_name = "idpatch calibration/quantize.py"
    quantized.producer_version = f"onnxruntime {__import__('onnxruntime').__version__}"
    data = out.with_name(out.name + ".data")
    weight_bytes = sum(len(t.raw_data) + 4 * len(t.float_data) for t in quantized.graph.initializer)
    if weight_bytes > MAX_EXTERNAL:
        onnx.save(quantized, out, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=1024)
    else:
        onnx.save(quantized, out)
    return quantized


def quantized_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def holdout_errors(fp32: pathlib.Path, int8: pathlib.Path, records: list[dict], calib: pathlib.Path) -> dict:
    """INT8 against FP32 on held-out records: worst max-abs error relative to the largest FP32
    value, and worst cosine similarity, per output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    names = [o.name for o in sessions[0].get_outputs()]
    worst_rel, worst_cos = 0.0, 1.0
    for record in records:
        reference, ours = (run_record(s, calib, record) for s in sessions)
        for a, b in zip(reference, ours):
            a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            scale = max(float(np.max(np.abs(a))), np.finfo(np.float64).tiny)
            worst_rel = max(worst_rel, float(np.max(np.abs(a - b))) / scale)
            denominator = max(float(np.linalg.norm(a) * np.linalg.norm(b)), np.finfo(np.float64).tiny)
            worst_cos = min(worst_cos, float(np.dot(a, b)) / denominator)
    return {"records": len(records), "outputs": names, "max_rel_err": worst_rel, "min_cosine": worst_cos}


# ---------------------------------------------------------------- the set


def relocate(path: str, prefix: str) -> str:
    return f"{prefix}{path}" if prefix else path


def tokenizer_paths(section: dict) -> list[str]:
    """The file-valued keys of one tokenizer entry: `file` (format 3) or `vocab`/`merges` (2)."""
    return [k for k, v in section.items() if isinstance(v, str) and (k == "file" or f"{k}_sha256" in section)]


def base_link(source: pathlib.Path, out: pathlib.Path) -> str | None:
    """The base-set name when OUT sits beside SET in one folder, else None (files are copied)."""
    # Compared as given, links not followed: a set reached through a link in OUT's folder is
    # named by that link (the runtime follows it).
    source, out = pathlib.Path(os.path.abspath(source)), pathlib.Path(os.path.abspath(out))
    if source.parent == out.parent and source != out:
        return source.name
    return None


def copy_file(source_dir: pathlib.Path, out: pathlib.Path, relative: str) -> None:
    target = out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_dir / relative, target)


def shared_entries(manifest: dict, source: pathlib.Path, out: pathlib.Path, base: str | None,
                   quantized: list[str]) -> dict:
    """The source set's graphs and tokenizers, relocated or copied; the graphs to be quantized are
    not copied (their entries are replaced)."""
    prefix = f"../{base}/" if base else ""
    graphs = {}
    for role, entry in manifest["graphs"].items():
        entry = json.loads(json.dumps(entry))
        files = [entry["file"]] + [d["file"] for d in entry.get("external_data", [])]
        if not base:
            for f in files if role not in quantized else []:
                copy_file(source, out, f)
            # The quantized graphs are validated against these too (the PyTorch outputs).
            if entry.get("golden"):
                shutil.copytree(source / entry["golden"], out / entry["golden"], dirs_exist_ok=True)
        entry["file"] = relocate(entry["file"], prefix)
        for d in entry.get("external_data", []):
            d["file"] = relocate(d["file"], prefix)
        if entry.get("golden"):
            entry["golden"] = relocate(entry["golden"], prefix)
        graphs[role] = entry
    tokenizers = json.loads(json.dumps(manifest["tokenizers"]))
    for section in tokenizers.values():
        for key in tokenizer_paths(section):
            if not base:
                copy_file(source, out, section[key])
            section[key] = relocate(section[key], prefix)
    return {"graphs": graphs, "tokenizers": tokenizers}


def split_records(index: dict, graph: str, args) -> tuple[list[dict], list[dict]]:
    records = [r for r in index["records"] if r["graph"] == graph]
    if args.holdout:
        held = [r for r in records if r["generation"] % args.holdout == args.holdout - 1]
        records = [r for r in records if r["generation"] % args.holdout != args.holdout - 1]
    else:
        held = []
    if args.max_records and len(records) > args.max_records:
        rng = np.random.default_rng(args.seed)
        keep = sorted(rng.choice(len(records), size=args.max_records, replace=False).tolist())
        records = [records[i] for i in keep]
    if not records:
        fail(f"{args.calib}: no calibration records for graph {graph}")
    if args.holdout and not held:
        fail(f"--holdout {args.holdout}: no generation of {args.calib} is held out (generation g is when "
             f"g % {args.holdout} == {args.holdout - 1}); give a smaller K")
    return records, held


def quantize_one(graph: str, manifest: dict, index: dict, args) -> dict:
    entry = json.loads(json.dumps(manifest["graphs"][graph]))
    source = args.set / entry["file"]
    recorded = index["graphs"].get(graph)
    if recorded is None:
        fail(f"{args.calib} holds no recording of graph {graph}")
    if recorded != entry["sha256"]:
        fail(f"{args.calib} was recorded on graph {graph} with sha256 {recorded}, {args.set} has {entry['sha256']}")
    check_graph_files(manifest, args.set, graph)
    records, held = split_records(index, graph, args)
    started = time.time()
    structure = onnx.load(source, load_external_data=False)
    nodes, kept = select_nodes(structure, graph, args.residual_convs)
    tensors = tensors_to_calibrate(structure, nodes, args.outputs)
    del structure
    ranges = collect_ranges(source, tensors, records, args.calib, args)
    out_file = args.out / f"{graph}.onnx"
    quantized = quantize_graph(source, out_file, nodes, ranges, args)
    data = out_file.with_name(out_file.name + ".data")
    entry["file"] = out_file.name
    entry["sha256"] = sha256_of(out_file)
    entry["external_data"] = [{"file": data.name, "sha256": sha256_of(data)}] if data.exists() else []
    entry["precision"] = "int8"
    entry["opset"] = next(o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx"))
    report = {
        "method": args.method,
        "percentile": args.percentile if args.method == "percentile" else None,
        "activations": f"{args.activation_type} per-tensor {args.activations}",
        "weights": f"int8 per-channel symmetric, {args.weight_bits}-bit range",
        "outputs": args.outputs,
        "quantized_nodes": len(nodes),
        "float_weight_nodes": dict(sorted(kept.items())),
        "qdq_nodes": quantized_counts(quantized),
        "calibration_records": len(records),
    }
    del quantized
    if held:
        report["holdout"] = holdout_errors(source, out_file, held, args.calib)
    entry["quantization"] = report
    print(f"{graph}: {len(nodes)} nodes quantized, {len(kept)} kept float, {len(records)} records, "
          f"{time.time() - started:.1f} s" + (f", holdout {report['holdout']}" if held else ""), flush=True)
    return entry


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("set", type=pathlib.Path, help="FP32 graph set (holding manifest.json)")
    parser.add_argument("calib", type=pathlib.Path, help="calibration data of idpatch calibrate on SET")
    parser.add_argument("out", type=pathlib.Path, help="INT8 set to write (must not exist)")
    parser.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="percentile")
    parser.add_argument("--percentile", type=float, default=99.999)
    parser.add_argument("--graphs", default=",".join(QUANTIZED_GRAPHS))
    parser.add_argument("--max-records", type=int, default=0, help="at most this many records per graph (seeded)")
    parser.add_argument("--holdout", type=int, default=0, help="hold out every K-th generation and report errors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--activations", choices=["symmetric", "asymmetric"], default="symmetric")
    parser.add_argument("--outputs", choices=["quantized", "float"], default="quantized")
    parser.add_argument("--residual-convs", choices=["int8", "float"], default="int8")
    parser.add_argument("--activation-type", choices=["int8", "uint8"], default="int8",
                        help="int8 (S8S8, what TensorRT takes) or uint8 (U8S8, what ONNX Runtime's x86 CPU "
                             "kernels run; see calibration/README.md)")
    parser.add_argument("--weight-bits", type=int, choices=[7, 8], default=8,
                        help="7: weights in [-64, 63] (onnxruntime's reduce_range), no int16 saturation on x86 without VNNI")
    parser.add_argument("--name", help="set name (default: OUT's folder name)")
    args = parser.parse_args(argv)
    args.graphs = [g for g in args.graphs.split(",") if g]
    if not args.graphs or any(g not in QUANTIZED_GRAPHS for g in args.graphs):
        parser.error(f"--graphs: a comma-separated subset of {','.join(QUANTIZED_GRAPHS)}")
    if not 0 < args.percentile <= 100:
        parser.error("--percentile must be in (0, 100]")
    if args.holdout < 0 or args.holdout == 1 or args.max_records < 0 or args.seed < 0:
        parser.error("--holdout must be 0 or at least 2, --max-records and --seed at least 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        manifest = check_manifest(read_json(args.set / "manifest.json", "graph set"), args.set, args.graphs)
        index = check_index(read_json(args.calib / "calibration.json", "calibration data"), args.calib, FORMAT)
        check_out(args.out, args.set)
    except Refused as e:
        fail(str(e))
    # Our own partial folder (a concurrent run has its own); removed on any failure, SIGTERM too.
    partial = args.out.with_name(f"{args.out.name}.partial-{os.getpid()}")
    try:
        partial.mkdir()
    except OSError as e:
        fail(f"{args.out}: cannot make {partial.name}: {e.strerror or e}")
    base = base_link(args.set, args.out)
    target, args.out = args.out, partial
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        out_manifest = json.loads(json.dumps(manifest))
        out_manifest.update(shared_entries(manifest, args.set, partial, base, args.graphs))
        for graph in args.graphs:
            entry = quantize_one(graph, manifest, index, args)
            # The FP32 set's goldens: the PyTorch outputs the INT8 graph is validated against.
            entry["golden"] = out_manifest["graphs"][graph].get("golden")
            out_manifest["graphs"][graph] = entry
        out_manifest["name"] = args.name or target.name
        out_manifest["precision"] = "int8"
        if base:
            out_manifest["base"] = base
        out_manifest["source"] = {
            "kind": "quantized",
            "from": manifest.get("name"),
            "from_source": manifest.get("source"),
            "calibration": {k: index.get(k) for k in ("steps", "guidance", "samples_per_generation")}
            | {"generations": len(index.get("generations", [])), "records": len(index["records"])},
            "onnxruntime": __import__("onnxruntime").__version__,
            "onnx": onnx.__version__,
            "quantizer": "calibration/quantize.py " + " ".join(sys.argv[1:] if argv is None else argv),
        }
        (partial / "manifest.json").write_text(json.dumps(out_manifest, indent=2) + "\n")
        if target.exists() or target.is_symlink():
            fail(f"{target} appeared while quantizing; the result is not moved there")
        partial.rename(target)
    except Refused as e:
        shutil.rmtree(partial, ignore_errors=True)
        fail(str(e))
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        fail(f"{getattr(e, 'filename', None) or target}: {e.strerror or e}")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _terminated(signum, frame):
    """SIGTERM: unwind (the partial folder is removed) and exit as a terminated process would."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("quantize.py: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
