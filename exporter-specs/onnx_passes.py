"""ONNX passes of the exporter: saving with external data, FP16 conversion with the timestep
embedding kept in float32, and ONNX Runtime's CUDA fusions. Needs onnx and onnxruntime (not torch)."""

from __future__ import annotations

import pathlib

# protobuf cannot hold a model over 2 GiB; stay clear of the limit.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
FUSED_OP_TYPES = [
    "MultiHeadAttention", "Attention", "GroupNorm", "SkipGroupNorm", "BiasSplitGelu", "BiasAdd", "NhwcConv",
    "SkipLayerNormalization", "LayerNormalization", "BiasGelu", "FastGelu", "Gelu",
]
# Inputs whose sinusoidal embedding stays float32 in FP16 graphs (diffusers' Timesteps computes in float32).
FP32_EMBEDDING_INPUTS = ("timestep", "time_ids")
# Inputs that stay float32 in FP16 graphs: diffusers' schedulers hand over float32 timesteps (fractional
# ones too, e.g. with Karras sigmas), while time_ids are image sizes, exact in float16 (as diffusers
# passes them, in the prompt embeddings' dtype).
FP32_INPUTS = ("timestep",)


def needs_external_data(model) -> bool:
    """True past the protobuf limit (where ByteSize itself may fail to serialise)."""
    try:
        return model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    except Exception:  # protobuf raises EncodeError beyond 2 GiB
        return True


def save_model(model, path: pathlib.Path) -> None:
    import onnx

    data = path.with_name(path.name + ".data")
    for stale in (path, data):
        if stale.exists():
            stale.unlink()
    if needs_external_data(model):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def constants_to_initializers(model) -> None:
    """Turn Constant nodes into initializers so the FP16 converter keeps Resize scales/sizes FP32
    (it casts initializers by consumer, but rewrites every floating Constant node)."""
    from onnx import numpy_helper

    graph = model.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), node.output[0])
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def convert_fp16(path: pathlib.Path) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    model = to_fp16(model, needs_external_data(model))
    save_model(model, path)


def fuse_for_cuda(model):
    """ONNX Runtime's transformer optimizer (python fusions only) on a UNet/ControlNet ModelProto or
    path; returns the fused ModelProto, with the com.microsoft opset declared when it is used."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("unet")
    optimized = optimize_model(
        model, model_type="unet", num_heads=0, hidden_size=0, opt_level=0, use_gpu=True, optimization_options=options
    )
    fused = optimized.model
    if any(node.domain == "com.microsoft" for node in fused.graph.node) and not any(
        opset.domain == "com.microsoft" for opset in fused.opset_import
    ):
        fused.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return fused


def fused_op_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in FUSED_OP_TYPES:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def to_fp16(model, disable_shape_infer: bool, fp32_timestep_embedding: bool = True):
    """FP16 copy of an FP32 ModelProto: every floating tensor, input and output becomes float16 except
    Resize scales, the timestep embedding (see `timestep_embedding_nodes`) and the `timestep` input.

    `fp32_timestep_embedding=False` converts those too (only to measure what keeping them costs)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    constants_to_initializers(model)
    island = timestep_embedding_nodes(model) if fp32_timestep_embedding else []
    converted = convert_float_to_float16(
        model, keep_io_types=False, disable_shape_infer=disable_shape_infer, node_block_list=island
    )
    if island:
        drop_cast_round_trips(converted.graph, set(island))
        restore_fp32_inputs(converted, FP32_INPUTS)
    sort_nodes(converted.graph)
    return converted


def timestep_embedding_nodes(model) -> list[str]:
    """Names of the nodes between the `timestep` / `time_ids` inputs and the first matrix product
    after them: the sinusoidal projection (diffusers' `Timesteps`: Mul, Sin, Cos, Concat, Slice) and the
    reshapes and the concatenation with `text_embeds` around it.

    diffusers computes these in float32 whatever the model's dtype (`get_timestep_embedding` calls
    `.float()`) and casts the result to the sample dtype before `time_embedding` / `add_embedding`;
    in float16, arguments near 999 radians are rounded to 0.5 and sin/cos lose all precision.
    Empty for graphs without those inputs. Unnamed nodes on the path are given names."""
    starts = [value.name for value in model.graph.input if value.name in FP32_EMBEDDING_INPUTS]
    if not starts:
        return []
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    island, seen, pending = [], set(), list(starts)
    while pending:
        for node in consumers.get(pending.pop(), []):
            if node.op_type in ("MatMul", "Gemm") or id(node) in seen:
                continue
            seen.add(id(node))
            island.append(node)
            pending.extend(node.output)
    ops = {node.op_type for node in island}
    if "timestep" in starts and not {"Sin", "Cos"} <= ops:
        raise RuntimeError(f"timestep embedding not found after the timestep input (ops reached: {sorted(ops)})")
    names = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(island):
        if not node.name:
            node.name = f"timestep_embedding_{index}"
            if node.name in names:
                raise RuntimeError(f"node name {node.name} is already taken")
            names.add(node.name)
    return [node.name for node in island]


def drop_cast_round_trips(graph, island: set[str]) -> None:
    """Remove the float16 round trips the converter puts between two float32 nodes of `island`.

    It casts each blocked node's output to float16 and back to float32 for the next blocked node,
    which would round the sinusoid arguments all the same; the next node reads the float32 value
    instead, and a cast to float16 that then feeds nothing goes."""
    from onnx import TensorProto

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    # A tensor two float32 nodes read gets one cast per reader, all with the same name and output.
    seen = set()
    for node in list(graph.node):
        if node.op_type == "Cast" and node.name.endswith("_cast_to_fp32_node"):
            if node.name in seen:
                graph.node.remove(node)
            seen.add(node.name)
    producers = {output: node for node in graph.node for output in node.output}
    for node in list(graph.node):
        source = producers.get(node.input[0]) if cast_to(node) == TensorProto.FLOAT else None
        if source is None or cast_to(source) != TensorProto.FLOAT16:
            continue
        origin = producers.get(source.input[0])
        if origin is None or origin.name not in island:
            continue
        for consumer in graph.node:
            for index, name in enumerate(consumer.input):
                if name == node.output[0]:
                    consumer.input[index] = source.input[0]
        graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    for node in list(graph.node):
        if cast_to(node) == TensorProto.FLOAT16 and node.output[0] not in read:
            graph.node.remove(node)


def restore_fp32_inputs(model, inputs: tuple[str, ...]) -> None:
    """Give the named graph inputs back their float32 type after FP16 conversion.

    Their consumers are all float32 nodes, which the converter fed through a Cast from float16 to
    float32; those casts are removed so that the values reach them unrounded."""
    from onnx import TensorProto

    graph = model.graph
    for value in graph.input:
        if value.name not in inputs or value.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        value.type.tensor_type.elem_type = TensorProto.FLOAT
        casts = [node for node in graph.node if value.name in node.input]
        for cast in casts:
            to = next((a.i for a in cast.attribute if a.name == "to"), None)
            if cast.op_type != "Cast" or to != TensorProto.FLOAT:
                raise RuntimeError(f"input {value.name} feeds {cast.op_type} {cast.name}, not a cast to float32")
            for node in graph.node:
                for index, name in enumerate(node.input):
                    if name == cast.output[0]:
                        node.input[index] = value.name
            graph.node.remove(cast)
            for info in [v for v in graph.value_info if v.name == cast.output[0]]:
                graph.value_info.remove(info)


def sort_nodes(graph) -> None:
    """Order the nodes topologically (the FP16 converter appends its casts at the end, which the
    ONNX checker rejects), keeping the existing order wherever it already is one."""
    available = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise RuntimeError(f"graph has a cycle or an undefined input near node {pending[0].name}")
        ready_ids = {id(node) for node in ready}
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [node for node in pending if id(node) not in ready_ids]
    copies = [type(node)() for node in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def optimize_for_cuda(path: pathlib.Path, precision: str) -> dict[str, int]:
    """Rewrite a UNet/ControlNet graph with ONNX Runtime's fused CUDA operators; returns fused op counts.

    The optimizer runs on the FP32 graph (it fails on the FP16 legacy export); FP16 conversion, when
    requested, comes after it with Constant nodes turned into initializers first.
    """
    import onnx

    onnx_model = fuse_for_cuda(str(path))
    if precision == "fp16":
        onnx_model = to_fp16(onnx_model, needs_external_data(onnx_model))
    save_model(onnx_model, path)
    # The checker reads the file so that graphs with external data work too.
    onnx.checker.check_model(str(path))
    return fused_op_counts(onnx_model)

