"""What an OM computes, for the stand-in back end: the ONNX graph the atc stand-in's JSON "OM" names, run by
ONNX Runtime at the precision atc was told to compile it at — not in fp32 whatever atc was told.

atc's precision modes (GE's option check lists them; CANN's atc option pages describe them), as modelled:

- ``force_fp16`` (atc's default on 310P and 910B), ``allow_fp32_to_fp16``, v2 ``fp16``: every op computes in
  fp16: it reads fp16 operands and writes an fp16 result;
- ``must_keep_origin_dtype``, ``force_fp32``, v2 ``origin``: every op as the graph has it, fp32;
- ``allow_mix_precision`` / ``allow_mix_precision_fp16``, v2 ``mixed_float16``: the matrix products and
  convolutions (Cube) in fp16, the rest in fp32 (``_bf16`` / ``mixed_bfloat16``: bfloat16);
- ``allow_fp32_to_bf16``: every op in bfloat16; ``cube_fp16in_fp32out``: Cube ops read fp16, write fp32;
- ``--keep_dtype``: the listed nodes (and ``OpType::X`` lines: every op of that type) compute as the graph has
  them, fp32 — except under must_keep_origin_dtype, where it has no effect.

A value crosses an edge in the precision its producer wrote it in, and a consumer that reads a narrower type
gets it rounded there (atc inserts a Cast on that edge): so an fp16 op's inf after an overflow reaches every
consumer, and an fp32 op kept between fp16 ops still reads fp16-rounded inputs. Weights and the model input
are fp32 until an op reads them. The model's output leaves in fp32 (atc's ``--output_type`` default). Rounding is
per op output (fp32 arithmetic inside an op, as Cube units accumulate): the cost of fp16 storage, not a kernel's
exact bits. The hif8 modes of newer chips are not modelled (an error at compile time in the atc stand-in).
"""

import numpy as np

FP32, FP16, BF16 = "fp32", "fp16", "bf16"
CUBE = {"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger"}
# mode → (every op's precision, Cube ops' (read, write) precision or None for the same as every op)
MODES = {
    "force_fp16": (FP16, None), "allow_fp32_to_fp16": (FP16, None), "fp16": (FP16, None),
    "must_keep_origin_dtype": (FP32, None), "force_fp32": (FP32, None), "origin": (FP32, None),
    "allow_mix_precision": (FP32, (FP16, FP16)), "allow_mix_precision_fp16": (FP32, (FP16, FP16)),
    "mixed_float16": (FP32, (FP16, FP16)), "allow_mix_precision_bf16": (FP32, (BF16, BF16)),
    "mixed_bfloat16": (FP32, (BF16, BF16)), "allow_fp32_to_bf16": (BF16, None),
    "cube_fp16in_fp32out": (FP32, (FP16, FP32)),
}
ORIGIN_MODES = ("must_keep_origin_dtype", "origin")  # --keep_dtype has no effect there
DEFAULT_MODE = "force_fp16"


def compiled_precision(flags):
    """(mode, kept node names, kept op types) from the atc flags the OM was compiled with."""
    values = dict(flag[2:].split("=", 1) for flag in flags if flag.startswith("--") and "=" in flag)
    mode = values.get("precision_mode") or values.get("precision_mode_v2") or DEFAULT_MODE
    names, types = set(), set()
    if "keep_dtype" in values and mode not in ORIGIN_MODES:
        with open(values["keep_dtype"], encoding="utf-8") as handle:
            for line in (line.strip() for line in handle):
                if line.startswith("OpType::"):
                    types.add(line[len("OpType::"):])
                elif line:
                    names.add(line)
    return mode, names, types


class Precision:
    """Which precision each op of the graph reads and writes."""

    def __init__(self, flags):
        self.mode, self.kept_names, self.kept_types = compiled_precision(flags)
        self.every_op, self.cube = MODES[self.mode]

    def of(self, node):
        if node.name in self.kept_names or node.op_type in self.kept_types:
            return FP32, FP32
        if node.op_type in CUBE and self.cube:
            return self.cube
        return self.every_op, self.every_op


def _rounding(value, precision, tag, make_node):
    """Nodes that take ``value`` through ``precision`` and back to float32 → (nodes, rounded value name). ONNX
    Runtime before 1.17 drops a float→float16→float or float→bfloat16→float Cast pair as lossless even with its
    optimiser off; an Identity between them keeps the pair. It holds because the session runs with every graph
    optimisation off (eliminating an Identity is a basic one), and it has kernels for both types (Max has
    none for bfloat16)."""
    from onnx import TensorProto

    narrow = {FP16: TensorProto.FLOAT16, BF16: TensorProto.BFLOAT16}[precision]
    stored = f"{value}::{tag}:{precision}"
    nodes = [make_node("Cast", [value], [stored], to=narrow, name=f"{stored}/store"),
             make_node("Identity", [stored], [f"{stored}/held"], name=f"{stored}/hold"),
             make_node("Cast", [f"{stored}/held"], [f"{stored}/read"], to=TensorProto.FLOAT, name=f"{stored}/read")]
    return nodes, f"{stored}/read"


def at_precision(model, precision):
    """``model`` rewritten so that ONNX Runtime computes what the OM computes → (model, {value: precision it is
    stored in}). Every original value keeps its name and holds what the op that made it wrote."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    floats = {v.name for v in list(inferred.value_info) + list(graph.input) + list(graph.output)
              if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    floats |= {init.name for init in graph.initializer if init.data_type == TensorProto.FLOAT}
    stored = {}  # value → the precision its producer wrote it in (absent: fp32)
    nodes = []
    for node in graph.node:
        reads, writes = precision.of(node)
        if node.op_type == "Constant":  # a weight, not an op
            reads = writes = FP32
        for index, name in enumerate(node.input):
            held = stored.get(name, FP32)
            if name in floats and reads != FP32 and held != reads:
                rounding, node.input[index] = _rounding(name, reads, f"{node.name}.in{index}", helper.make_node)
                nodes += rounding
        nodes.append(node)
        for index, name in enumerate(node.output):
            if name in floats and writes != FP32:
                node.output[index] = f"{name}::raw"
                rounding, rounded = _rounding(node.output[index], writes, "out", helper.make_node)
                rounding[-1].output[0] = name
                nodes += rounding
                stored[name] = writes
    del graph.node[:]
    graph.node.extend(nodes)
    return model, stored


def expose(model, names):
    """``model`` with ``names`` (values of the original graph) added to its outputs, as float or their own type."""
    import onnx
    from onnx import TensorProto, helper

    present = {output.name for output in model.graph.output}
    types = {v.name: v.type.tensor_type.elem_type
             for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    model.graph.output.extend(helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None)
                              for name in names if name not in present)
    return model


class CompiledModel:
    """The OM's computation: ``values(feed)`` → its outputs (``output_names``) and, with ``expose_all``, every
    value of the original graph as the OM holds it (for the operator dump); ``stored`` → the precision each
    value is stored in."""

    def __init__(self, om, expose_all=False):
        import onnx
        import onnxruntime as ort

        source = onnx.load(om["onnx"])
        # what the original nodes produce, named before at_precision rewrites the graph in place
        produced = [name for node in source.graph.node if node.op_type != "Constant" for name in node.output if name]
        self.precision = Precision(om["flags"])
        model, self.stored = at_precision(source, self.precision)
        self.output_names = [output.name for output in model.graph.output]
        if expose_all:
            model = expose(model, produced)
        options = ort.SessionOptions()
        # a Cast pair is not lossless: ONNX Runtime's optimiser must not fold it away
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.all_names = [output.name for output in self.session.get_outputs()]

    def values(self, feed):
        with np.errstate(over="ignore"):
            return dict(zip(self.all_names, self.session.run(None, feed)))
