"""Step 2: export an open_clip model's towers to ONNX with the reference I/O contract, and check them.

Each graph has one input and one L2-normalised output with a dynamic batch axis:
``image`` float32 [B,3,H,W] → ``image_embed`` and ``text`` int64 [B,L] → ``text_embed``.
"""

import contextlib
import inspect
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..agreement import compare_embeddings
from ..files import KitError, staging_dir
from ..onnx_runtime import INPUT_TYPES, load_session
from .text_lengths import DYNAMIC_LENGTH, text_graph
from .towers import TOWERS, attend, example_inputs, input_geometry, plain_self_attention, tower_module, trims_exactly

DEFAULT_OPSET = 14  # lowest the TorchScript exporter handles with torch 2.x attention; ATC in CANN 7 takes 9–18
# CANN's ONNX parser registers every op these graphs use at opsets 11, 13, 14 and 17; at 18 ReduceL2 is
# missing, from 19 nothing (CANN 5.x/6.0 parse up to 13)
OPSETS = range(11, 18)
PARITY_TOLERANCE = 1e-4
# torch ≥ 2.9 exports through dynamo unless told not to; torch before 2.5 has only the TorchScript
# exporter and no such argument
TORCHSCRIPT_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
# protobuf cannot serialise a message of 2 GiB; graphs with more weight bytes (ViT-H-14's vision tower,
# ViT-bigG) keep them in "{name}.onnx.data" beside the graph, as ONNX external data
EXTERNAL_DATA_BYTES = 1_900_000_000


def onnx_path(prefix, graph):
    """``{prefix}_{graph}.onnx``; ``graph`` a tower or a text length variant (``text_len32``)."""
    return Path(f"{prefix}_{graph}.onnx")


@contextlib.contextmanager
def plain_attention(model, static=True):
    """Route every self-attention with no mask or a 2-D one through ``attend`` while exporting
    (``static``: see ``attend``)."""
    patched = []
    for module in model.modules():
        if plain_self_attention(module):
            original = module.forward

            def forward(query, key, value, *args, _module=module, _original=original, **kwargs):
                mask = kwargs.get("attn_mask")
                if (query is key is value and not args and kwargs.get("key_padding_mask") is None
                        and (mask is None or mask.dim() == 2)):
                    if _module.batch_first:
                        return attend(_module, query, query, mask, static), None
                    rows = query.transpose(0, 1)  # open_clip before 2.27: sequence-first
                    return attend(_module, rows, rows, mask, static).transpose(0, 1), None
                return _original(query, key, value, *args, **kwargs)

            module.forward = forward
            patched.append((module, original))
    try:
        yield
    finally:
        for module, original in patched:
            module.forward = original


def _tracing_input(model, tower, given=None, length=None):
    """A batch of 2 (a dynamic batch axis cannot be traced from a size-1 example): the given input
    first where there is one. A text length variant is traced at its own length (a dynamic one at half
    the context, so a length baked into the graph by mistake fails the parity check)."""
    if length is not None:
        tokens = input_geometry(model)[1] // 2 if length == DYNAMIC_LENGTH else int(length)
        return example_inputs(model, tower, batch=2, max_tokens=tokens)[:, :tokens]
    fresh = example_inputs(model, tower, batch=2)
    return fresh if given is None else np.concatenate([given, fresh[:1]]).astype(fresh.dtype)


def export_tower(model, tower, path, opset=DEFAULT_OPSET, rewrite=True, given=None, length=None, npu_options=None):
    """Write ``path`` (atomically) with the tower's graph; dynamic batch, one input, one output.

    ``rewrite=False`` exports open_clip's forward as torch translates it (torch's own
    MultiheadAttention, every row through the last block): the baseline the benchmark compares with.
    ``given`` is a (1, …) input to trace with (the reference's ``--image`` / ``--text``). ``length``
    (text): a static token count below the context, or ``DYNAMIC_LENGTH`` for a dynamic sequence axis;
    the graph records the model's context length in its metadata (``context_length``). ``npu_options``: the
    NPU-shaped forward with these options (npu_graph.py), recorded in the metadata (``npu_graph``).
    """
    import onnx

    spec = TOWERS[tower]
    path = Path(path)
    metadata = {"context_length": str(input_geometry(model)[1])} if tower == "text" else {}
    if npu_options is not None:
        from .npu_graph import npu_tower_module
        from .npu_options import METADATA_KEY, describe, tower_options

        module, rewrite = npu_tower_module(model, tower, npu_options), False  # it runs its own attention
        metadata[METADATA_KEY] = describe(tower_options(npu_options, tower))
    else:
        module = tower_module(model, tower, pooled_last_block=rewrite, length=length)
    example = torch.from_numpy(_tracing_input(model, tower, given, length))
    example = example.to(getattr(module, "input_dtype", example.dtype))  # an NPU text graph may take int32
    dynamic_axes = {spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}}
    if length == DYNAMIC_LENGTH:
        dynamic_axes[spec.input_name][1] = "sequence"
    # no torch.no_grad() here: under it nn.MultiheadAttention takes its fused fast path, an op the
    # TorchScript exporter cannot translate; with grad enabled it traces as plain MatMul/Softmax
    attention = plain_attention(model, static=length != DYNAMIC_LENGTH) if rewrite else contextlib.nullcontext()
    with staging_dir(path) as work, warnings.catch_warnings(), attention:
        # the exporter's and tracer's notes on open_clip internals are not actionable for a user
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        raw = work / "graph.onnx"  # beside it, one file per weight if the graph exceeds 2 GB
        torch.onnx.export(
            module, (example,), str(raw), **TORCHSCRIPT_EXPORTER, opset_version=opset,
            input_names=[spec.input_name], output_names=[spec.output_name], dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
        graph_model = onnx.load(str(raw))
        _fix_output_width(graph_model, module(example).shape[-1])
        if metadata:
            onnx.helper.set_model_props(graph_model, metadata)
        save_onnx(graph_model, path)
    return path


def _fix_output_width(graph_model, width):
    """Write the embedding width into the output shape ([batch, D]); the tracer leaves it symbolic."""
    dim = graph_model.graph.output[0].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = int(width)


def external_data_path(path):
    return Path(f"{path}.data")


def save_onnx(graph_model, path):
    """Write ``graph_model`` to ``path`` by rename; above ``EXTERNAL_DATA_BYTES`` of weights they go
    to ``{path}.data`` (one file, renamed into place first), which ONNX Runtime and atc read from
    beside the graph. A ``.data`` file left by an earlier, larger export of the same name is removed."""
    import onnx

    path = Path(path)
    data = external_data_path(path)
    large = sum(tensor.ByteSize() for tensor in graph_model.graph.initializer) > EXTERNAL_DATA_BYTES
    with staging_dir(path) as work:
        staged = work / path.name
        onnx.save(graph_model, str(staged), save_as_external_data=large, all_tensors_to_one_file=True,
                  location=data.name)
        if large:
            os.replace(work / data.name, data)
        os.replace(staged, path)
    if not large:
        data.unlink(missing_ok=True)
    return path


def torch_embeddings(model, tower, inputs):
    with torch.no_grad():
        return tower_module(model, tower)(torch.from_numpy(inputs)).numpy()


def onnx_runtime(path):
    """``run(inputs)`` of a one-input graph on ONNX Runtime's CPU provider, the inputs cast to the graph's own
    type (an NPU text graph takes int32 tokens): the export checks itself with ONNX Runtime directly, since the
    kit's sessions (run/) are built on the model, not under it."""
    session = load_session(path)
    graph_input = session.get_inputs()[0]
    dtype = INPUT_TYPES[graph_input.type]
    return lambda inputs: session.run(None, {graph_input.name: np.ascontiguousarray(inputs, dtype=dtype)})[0]


def check_parity(model, tower, path, batch_sizes=(1, 3), tolerance=PARITY_TOLERANCE, given=None):
    """ONNX Runtime vs PyTorch on fresh inputs of each batch size (and on ``given``, keyed ``"given"``);
    raises KitError when max abs diff exceeds ``tolerance``."""
    run = onnx_runtime(path)
    cases = [(batch, example_inputs(model, tower, batch, seed=seed)) for seed, batch in enumerate(batch_sizes, 1)]
    results = {}
    for key, inputs in cases + ([("given", given)] if given is not None else []):
        results[key] = compare_embeddings(torch_embeddings(model, tower, inputs), run(inputs))
    worst = max(result["max_abs_diff"] for result in results.values())
    if worst > tolerance:
        raise KitError(f"{path}: ONNX Runtime differs from PyTorch by {worst:.2e} (> {tolerance:g}); "
                       "try another --opset or report the model name")
    return results


def export_model(model, prefix, towers=("vision", "text"), opset=DEFAULT_OPSET, check=True, examples=None):
    """Export the towers; returns {tower: {"path": …, "parity": {batch: stats}}}. ``examples``
    ({tower: (1, …) array}, see ``given_examples``) are traced with and checked too."""
    if opset not in OPSETS:
        raise KitError(f"--opset {opset}: choose {OPSETS[0]}–{OPSETS[-1]}, the opsets CANN's ONNX parser takes for every "
                       f"op of these graphs (18 lacks ReduceL2; CANN 5.x/6.0 take up to 13); default {DEFAULT_OPSET}")
    report = {}
    for tower in towers:
        if tower not in TOWERS:
            raise KitError(f"--towers: unknown tower {tower!r}; choose from vision, text")
        given = (examples or {}).get(tower)
        path = export_tower(model, tower, onnx_path(prefix, tower), opset, given=given)
        report[tower] = {"path": str(path),
                         "parity": check_parity(model, tower, path, given=given) if check else None}
    return report


def export_npu_graphs(model, prefix, towers=("vision", "text"), opset=DEFAULT_OPSET, check=True, options=None):
    """``{prefix}_{graph}.onnx`` with the NPU-shaped forward and ``options`` (npu_options.py; the recommended
    set when None) for each tower the rewrite reproduces exactly (others are said and skipped), each checked
    against PyTorch like the standard graph; returns {graph: {path, parity}}."""
    from .npu_graph import supports
    from .npu_options import RECOMMENDED, graph_name

    options = RECOMMENDED if options is None else options
    report = {}
    for tower in towers:
        if not supports(model, tower):
            print(f"--npu-graph: the {tower} tower is not open_clip's standard ViT / CLIP text transformer; it keeps "
                  "the standard graph only")
            continue
        graph = graph_name(tower, options)
        path = export_tower(model, tower, onnx_path(prefix, graph), opset, npu_options=options)
        report[graph] = {"path": str(path), "parity": check_parity(model, tower, path) if check else None}
    return report


LENGTH_PARITY_TOLERANCE = 1e-5  # a shorter text graph against the full-length graph: the same arithmetic


def export_text_lengths(model, prefix, lengths, opset=DEFAULT_OPSET, check=True):
    """Text graphs shorter than the context, for exact length trimming: a static one per int in
    ``lengths`` (an NPU's length buckets) and ``DYNAMIC_LENGTH`` for the CPU's dynamic one. Each is
    checked against the full-length graph (exported first) on captions that fit it; returns
    {graph: {"path": …, "parity": {case: stats}}}."""
    context = input_geometry(model)[1]
    if not trims_exactly(model):
        raise KitError("this model's text tower attends to or pools every token, so shorter text graphs would change "
                       "its embeddings; run it at the full length (drop --text-lengths)")
    report = {}
    for length in lengths:
        if length != DYNAMIC_LENGTH and not 3 <= int(length) < context:
            raise KitError(f"--text-lengths {length}: a bucket holds 3 to {context - 1} tokens (the full {context} is "
                           "the reference graph itself)")
        graph = text_graph(length)
        path = export_tower(model, "text", onnx_path(prefix, graph), opset, length=length)
        report[graph] = {"path": str(path), "parity": check_length_parity(model, prefix, length) if check else None}
    return report


def check_length_parity(model, prefix, length):
    """The shorter graph on captions that fit it (trimmed as the runner trims them) against the
    full-length graph on the same captions, batch 1 and 3, and rows truncated at the context for the
    dynamic graph; raises KitError beyond ``LENGTH_PARITY_TOLERANCE``."""
    from .text_lengths import trimmed_width

    path = onnx_path(prefix, text_graph(length))
    full, short = onnx_runtime(_exported(prefix, "text")), onnx_runtime(path)
    context = input_geometry(model)[1]
    limit = context if length == DYNAMIC_LENGTH else int(length)
    cases = {batch: example_inputs(model, "text", batch, seed=seed, max_tokens=limit)
             for seed, batch in enumerate((1, 3), 1)}
    if length == DYNAMIC_LENGTH:  # a caption the tokenizer cut at the context: its EOT is the last token
        truncated = example_inputs(model, "text", 2, seed=4)
        truncated[0, 1:] = np.arange(1, context)
        truncated[0, -1] = 49407
        cases["truncated"] = truncated
    results = {}
    for key, tokens in cases.items():
        width = trimmed_width(tokens, None if length == DYNAMIC_LENGTH else (int(length),))
        results[key] = compare_embeddings(full(tokens), short(np.ascontiguousarray(tokens[:, :width])))
    worst = max(result["max_abs_diff"] for result in results.values())
    if worst > LENGTH_PARITY_TOLERANCE:
        raise KitError(f"{path}: differs from the full-length text graph by {worst:.2e} "
                       f"(> {LENGTH_PARITY_TOLERANCE:g}) on captions that fit it; report the model name")
    return results


def _exported(prefix, tower):
    """The exported fp32 ONNX a derived variant (int8, fp16 estimate) is made from."""
    source = onnx_path(prefix, tower)
    if not source.is_file():
        raise KitError(f"{source}: ONNX model not found; export it first (step 2)")
    return source


def int8_path(prefix, tower):
    return Path(f"{prefix}_{tower}_int8.onnx")


def quantize_int8(prefix, tower):
    """ONNX Runtime dynamic quantization (int8 weights, QInt8): the faster CPU fallback, whose
    accuracy cost the accuracy report shows next to fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .loading import quiet_root_logger

    source, target = _exported(prefix, tower), int8_path(prefix, tower)
    with staging_dir(target) as work, warnings.catch_warnings(), quiet_root_logger():
        warnings.simplefilter("ignore")
        staged = work / "int8.onnx"
        # the matrix products only: ONNX Runtime before 1.17 has no ConvInteger kernel for int8 weights,
        # and the patch embedding is ~2 % of a ViT tower's FLOP
        quantize_dynamic(str(source), str(staged), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         use_external_data_format=external_data_path(source).is_file())
        save_onnx(onnx.load(str(staged)), target)
    return target


def fp16_estimate_path(prefix, tower):
    return Path(f"{prefix}_{tower}_fp16sim.onnx")


def simulate_fp16(prefix, tower):
    """An fp32 graph that rounds like an fp16 NPU build, to estimate force_fp16's accuracy cost on a CPU.

    Weights are rounded to fp16 and every float tensor a node produces passes through
    Cast(float16)→Cast(float): storage in fp16, arithmetic in fp32 — what Ascend's cube units do
    (fp16 operands, fp32 accumulation, fp16 results). Not bit-exact to any NPU kernel: an estimate.
    """
    import onnx

    source = _exported(prefix, tower)
    return save_onnx(round_like_fp16(onnx.load(str(source)), float_outputs(source)), fp16_estimate_path(prefix, tower))


INLINE_WEIGHT_BYTES = 1024  # onnx's own threshold for external data: smaller tensors (shapes, scalars) stay inline


def weightless(model):
    """``model``'s graph without its weight bytes: every initializer above ``INLINE_WEIGHT_BYTES`` an
    external-data stub, as ``onnx.load(..., load_external_data=False)`` leaves a large model's. Shape
    inference serialises what it is given; on this it costs the graph's size, not the weights'."""
    from onnx import StringStringEntryProto, TensorProto, helper

    graph = model.graph
    initializers = []
    for init in graph.initializer:
        if init.data_location == TensorProto.EXTERNAL or init.ByteSize() <= INLINE_WEIGHT_BYTES:
            initializers.append(init)
        else:
            initializers.append(TensorProto(name=init.name, data_type=init.data_type, dims=init.dims,
                                            data_location=TensorProto.EXTERNAL,
                                            external_data=[StringStringEntryProto(key="location", value="")]))
    skeleton = helper.make_graph(graph.node, graph.name, graph.input, graph.output, initializers)
    return helper.make_model(skeleton, opset_imports=model.opset_import, ir_version=model.ir_version)


def inferred_types(model, batch=None):
    """{tensor name: its ``TypeProto.Tensor``} for the graph's inputs, outputs and every value a node
    produces, by shape inference on ``weightless(model)``. ``batch`` sets a symbolic first dimension of
    the graph's inputs first, so that sizes come out whole."""
    import onnx

    skeleton = weightless(model)
    if batch is not None:
        for graph_input in skeleton.graph.input:
            dims = graph_input.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                dims[0].dim_value = batch
    graph = onnx.shape_inference.infer_shapes(skeleton, data_prop=batch is not None).graph
    return {value.name: value.type.tensor_type for value in [*graph.input, *graph.value_info, *graph.output]}


def float_outputs(source):
    """Names of the float tensors the nodes of the graph at ``source`` produce (shape inference on
    its structure alone: any model size)."""
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    return float_names(model.graph, inferred_types(model))


def float_names(graph, types):
    """The float tensors among ``types`` (``inferred_types`` of ``graph``'s model) that nodes produce."""
    from onnx import TensorProto

    inputs = {value.name for value in graph.input}
    return {name for name, value in types.items() if value.elem_type == TensorProto.FLOAT and name not in inputs}


def rounded_weights(graph, keep=()):
    """The tensors ``round_like_fp16`` rounds when it is given a weight: those a node outside ``keep`` reads."""
    keep = set(keep)
    return {name for node in graph.node if node.name not in keep for name in node.input}


def round_like_fp16(model, float_values, keep=(), rounded=None):
    """``model`` (changed in place and returned) with the fp16 rounding of ``simulate_fp16``;
    ``float_values`` are ``float_outputs`` of its graph. ``keep``: node names left in fp32 as atc's
    ``--keep_dtype`` leaves them (their outputs and the weights only they read are not rounded).
    ``rounded``: ``rounded_weights`` of the whole graph when ``model`` is a slice of it (a weight
    another slice's node reads in fp16 is rounded here too)."""
    from onnx import TensorProto, helper, numpy_helper

    keep = set(keep)
    graph = model.graph
    rounded = rounded_weights(graph, keep) if rounded is None else rounded
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name in rounded:
            with np.errstate(over="ignore"):  # a weight beyond fp16's range becomes inf, as it would on the NPU
                rounded_weight = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded_weight, init.name))
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.op_type in ("Shape", "Constant") or node.name in keep:
            continue
        for index, output in enumerate(node.output):
            if output not in float_values:
                continue
            raw = f"{output}__fp32"
            node.output[index] = raw
            nodes.append(helper.make_node("Cast", [raw], [f"{output}__fp16"], to=TensorProto.FLOAT16,
                                          name=f"{node.name}/to_fp16_{index}"))
            # Max(h, h) is h; it keeps ONNX Runtime < 1.17 from dropping the Cast pair as if it were lossless
            nodes.append(helper.make_node("Max", [f"{output}__fp16", f"{output}__fp16"], [f"{output}__fp16_kept"],
                                          name=f"{node.name}/keep_fp16_{index}"))
            nodes.append(helper.make_node("Cast", [f"{output}__fp16_kept"], [output], to=TensorProto.FLOAT,
                                          name=f"{node.name}/from_fp16_{index}"))
    del graph.node[:]
    graph.node.extend(nodes)
    return model
