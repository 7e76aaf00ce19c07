"""What calibration/quantize.py checks before it quantizes: the FP32 set's manifest, the files it
quantizes (sha256), the calibration index and its records, and where the INT8 set goes. Each
problem is a one-line message naming the input (`Refused`), which quantize.py prints with exit
status 2."""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np


class Refused(Exception):
    """Bad input: the message names it and says what is wrong."""


def _relative_inside(path: object, what: str) -> str:
    """A path as manifests and calibration indexes hold them: relative, no `..`, no empty part."""
    if not isinstance(path, str) or not path:
        raise Refused(f"{what}: {path!r} is not a file path")
    parts = pathlib.PurePosixPath(path).parts
    if path.startswith("/") or "\\" in path or any(p in ("..", "") for p in parts):
        raise Refused(f"{what}: {path!r} must be a relative path inside the folder (no '..')")
    return path


def _mapping(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise Refused(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def sha256_of(path: pathlib.Path) -> str:
    """The sha256 of a file, as the manifests record it (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_manifest(manifest: object, where: pathlib.Path, graphs: list[str]) -> dict:
    """The FP32 set's manifest: a set that holds its own files (no `base`), every path inside it,
    the graphs to quantize present."""
    manifest = _mapping(manifest, f"{where}/manifest.json")
    precision = manifest.get("precision")
    if precision != "fp32":
        raise Refused(f"{where} is not an FP32 set (precision {precision!r}); quantize an FP32 set")
    if "base" in manifest:
        raise Refused(f"{where} shares files with the set {manifest['base']!r} (\"base\"); quantize a set "
                      "that holds its own files")
    entries = _mapping(manifest.get("graphs"), f"{where}/manifest.json: graphs")
    for role, entry in entries.items():
        entry = _mapping(entry, f"{where}/manifest.json: graphs.{role}")
        _relative_inside(entry.get("file"), f"{where}: graph {role}: file")
        if not isinstance(entry.get("sha256"), str):
            raise Refused(f"{where}: graph {role}: sha256 is missing")
        external = entry.get("external_data", [])
        if not isinstance(external, list):
            raise Refused(f"{where}: graph {role}: external_data must be a list")
        for item in external:
            _relative_inside(_mapping(item, f"{where}: graph {role}: external_data").get("file"),
                             f"{where}: graph {role}: external data file")
        if entry.get("golden") is not None:
            _relative_inside(entry["golden"], f"{where}: graph {role}: golden")
    for graph in graphs:
        if graph not in entries:
            raise Refused(f"{where}: the manifest has no graph {graph}")
    tokenizers = _mapping(manifest.get("tokenizers"), f"{where}/manifest.json: tokenizers")
    for name, section in tokenizers.items():
        section = _mapping(section, f"{where}/manifest.json: tokenizers.{name}")
        for key, value in section.items():
            if key == "file" or f"{key}_sha256" in section:
                _relative_inside(value, f"{where}: tokenizer {name}: {key}")
    return manifest


def check_graph_files(manifest: dict, where: pathlib.Path, graph: str) -> None:
    """The graph file and its external data match the manifest's sha256 (the calibration index
    pins the manifest's digest, so both describe the bytes that are read)."""
    entry = manifest["graphs"][graph]
    files = [(entry["file"], entry["sha256"])]
    files += [(d["file"], d.get("sha256")) for d in entry.get("external_data", [])]
    for file, digest in files:
        path = where / file
        if not path.is_file():
            raise Refused(f"{where}: graph {graph}: {file} is missing")
        if sha256_of(path) != digest:
            raise Refused(f"{where}: graph {graph}: {file} does not match its sha256 in the manifest")


def check_index(index: object, where: pathlib.Path, fmt: int) -> dict:
    """The calibration index: the format this script reads, complete, its records well formed
    and naming files inside the calibration folder."""
    index = _mapping(index, f"{where}/calibration.json")
    found = index.get("format")
    if type(found) is not int or found != fmt:
        raise Refused(f"{where}: calibration format {found!r}; this script reads format {fmt}")
    if index.get("complete") is not True:
        raise Refused(f"{where}: the calibration is not complete (\"complete\" is not true): it is being "
                      "recorded, or its run stopped")
    graphs = _mapping(index.get("graphs"), f"{where}/calibration.json: graphs")
    for graph, digest in graphs.items():
        if not isinstance(digest, str):
            raise Refused(f"{where}/calibration.json: graphs.{graph} must be a sha256")
    records = index.get("records")
    if not isinstance(records, list):
        raise Refused(f"{where}/calibration.json: records must be a list")
    for i, record in enumerate(records):
        what = f"{where}/calibration.json: records[{i}]"
        record = _mapping(record, what)
        if not isinstance(record.get("graph"), str):
            raise Refused(f"{what}: graph is missing")
        if type(record.get("generation")) is not int or record["generation"] < 0:
            raise Refused(f"{what}: generation must be a whole number")
        inputs = _mapping(record.get("inputs"), f"{what}: inputs")
        if not inputs:
            raise Refused(f"{what}: inputs is empty")
        for name, file in inputs.items():
            _relative_inside(file, f"{what}: input {name}")
    return index


def load_record(calib: pathlib.Path, record: dict) -> dict[str, np.ndarray]:
    """A record's inputs: float32 `.npy` arrays of finite values (no pickles)."""
    values = {}
    for name, file in record["inputs"].items():
        path = calib / file
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise Refused(f"{calib}: input {name} of a {record['graph']} record ({file}): {e}") from None
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            raise Refused(f"{calib}: input {name} of a {record['graph']} record ({file}) is not a float32 array")
        if not np.isfinite(value).all():
            raise Refused(f"{calib}: input {name} of a {record['graph']} record ({file}) holds NaN or infinity")
        values[name] = value
    return values


def check_out(out: pathlib.Path, source: pathlib.Path) -> None:
    """The INT8 set's folder: new, not inside the source set, in a folder that exists."""
    if out.exists() or out.is_symlink():
        raise Refused(f"{out} exists; give a new folder")
    resolved_source = source.resolve()
    parent = out.parent.resolve()
    if parent == resolved_source or resolved_source in parent.parents:
        raise Refused(f"{out} is inside the source set {source}; give a folder outside it")
    if not parent.is_dir():
        raise Refused(f"{out}: the folder {out.parent} does not exist")
