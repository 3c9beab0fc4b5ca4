"""Step 2: export an open_clip model's towers to ONNX with the reference I/O contract, and check them.

Each graph has one input and one L2-normalised output with a dynamic batch axis:
``image`` float32 [B,3,H,W] → ``image_embed`` and ``text`` int64 [B,L] → ``text_embed``.
"""

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .files import KitError, atomic_path
from .metrics import compare_embeddings

DEFAULT_OPSET = 14  # lowest the TorchScript exporter handles with torch 2.x attention; ATC in CANN 7 takes 9–18
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class TowerSpec:
    tower: str
    input_name: str
    output_name: str
    input_format: str  # atc --input_format


TOWERS = {
    "vision": TowerSpec("vision", "image", "image_embed", "NCHW"),
    "text": TowerSpec("text", "text", "text_embed", "ND"),
}


def onnx_path(prefix, tower):
    return Path(f"{prefix}_{tower}.onnx")


def tower_module(model, tower):
    """A module whose forward is one tower's normalised embedding (one input, one output)."""
    class VisionTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, image):
            return self.model.encode_image(image, normalize=True)

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, text):
            # int32 tokens make the graph's ArgMax (EOT pooling) int32, which every ONNX Runtime
            # and converter supports; ids < 49408 so the result is unchanged.
            return self.model.encode_text(text.to(torch.int32), normalize=True)

    return (VisionTower if tower == "vision" else TextTower)().eval()


def input_geometry(model):
    """(image size (H, W), context length) read from the model itself."""
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return size, int(model.context_length if hasattr(model, "context_length") else model.text.context_length)


def example_inputs(model, tower, batch, seed=0):
    """Fresh inputs: normalised-range pixels, or token rows SOT … EOT 0 … of random lengths."""
    rng = np.random.default_rng(seed)
    (height, width), context_length = input_geometry(model)
    if tower == "vision":
        return rng.standard_normal((batch, 3, height, width)).astype(np.float32)
    tokens = np.zeros((batch, context_length), dtype=np.int64)
    for row in tokens:
        length = int(rng.integers(1, context_length - 1))
        row[0] = 49406
        row[1:length + 1] = rng.integers(1, 49406, size=length)
        row[length + 1] = 49407
    return tokens


def _plain_attention_forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                             average_attn_weights=True, is_causal=False):
    """nn.MultiheadAttention (batch_first self-attention) as separate q/k/v projections and 4-D
    MatMul/Softmax: no 5-D transposes for atc, fewer copies for ONNX Runtime (measured ≈ 5 % faster
    on ViT-B-32), the same result within float rounding (the export parity check guards it)."""
    # sequence length and width are fixed by the model: as Python ints (and -1 for the batch) they
    # become constant Reshape targets instead of Shape/Gather/Concat chains in the graph
    length, width = int(query.shape[1]), int(query.shape[2])
    heads = self.num_heads
    head_width = width // heads
    w_q, w_k, w_v = self.in_proj_weight.chunk(3)
    b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
    q = F.linear(query, w_q, b_q).reshape(-1, length, heads, head_width).transpose(1, 2)
    k = F.linear(query, w_k, b_k).reshape(-1, length, heads, head_width).permute(0, 2, 3, 1)
    v = F.linear(query, w_v, b_v).reshape(-1, length, heads, head_width).transpose(1, 2)
    scores = (q @ k) * (head_width ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, length, width)
    return self.out_proj(out), None


@contextlib.contextmanager
def plain_attention(model):
    """Swap the forward of every batch-first self-attention for ``_plain_attention_forward`` while exporting."""
    patched = []
    for module in model.modules():
        if (isinstance(module, torch.nn.MultiheadAttention) and module.batch_first and module._qkv_same_embed_dim
                and module.bias_k is None and not module.add_zero_attn and module.dropout == 0.0):
            original = module.forward

            def forward(query, key, value, *args, _module=module, _original=original, **kwargs):
                if query is key is value and not args and kwargs.get("key_padding_mask") is None:
                    return _plain_attention_forward(_module, query, key, value, **kwargs)
                return _original(query, key, value, *args, **kwargs)

            module.forward = forward
            patched.append((module, original))
    try:
        yield
    finally:
        for module, original in patched:
            module.forward = original


def export_tower(model, tower, path, opset=DEFAULT_OPSET, rewrite_attention=True):
    """Write ``path`` (atomically) with the tower's graph; dynamic batch, one input, one output.

    ``rewrite_attention=False`` keeps torch's own MultiheadAttention export (for side-by-side benchmarks).
    """
    spec = TOWERS[tower]
    module = tower_module(model, tower)
    example = torch.from_numpy(example_inputs(model, tower, batch=2))
    # no torch.no_grad() here: under it nn.MultiheadAttention takes its fused fast path, an op the
    # TorchScript exporter cannot translate; with grad enabled it traces as plain MatMul/Softmax
    rewrite = plain_attention(model) if rewrite_attention else contextlib.nullcontext()
    with atomic_path(path) as tmp, warnings.catch_warnings(), rewrite:
        # the exporter's and tracer's notes on open_clip internals are not actionable for a user
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module, (example,), str(tmp), dynamo=False, opset_version=opset,
            input_names=[spec.input_name], output_names=[spec.output_name],
            dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}},
            do_constant_folding=True,
        )
        _fix_output_width(tmp, module(example).shape[-1])
    return Path(path)


def _fix_output_width(path, width):
    """Write the embedding width into the output shape ([batch, D]); the tracer leaves it symbolic."""
    import onnx

    graph_model = onnx.load(str(path))
    dim = graph_model.graph.output[0].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = int(width)
    onnx.save(graph_model, str(path))


def torch_embeddings(model, tower, inputs):
    with torch.no_grad():
        return tower_module(model, tower)(torch.from_numpy(inputs)).numpy()


def check_parity(model, tower, path, batch_sizes=(1, 3), tolerance=PARITY_TOLERANCE):
    """ONNX Runtime vs PyTorch on fresh inputs; raises KitError when max abs diff exceeds ``tolerance``."""
    from .backends import OnnxRuntimeSession

    session = OnnxRuntimeSession(path)
    results = {}
    for seed, batch in enumerate(batch_sizes, start=1):
        inputs = example_inputs(model, tower, batch, seed=seed)
        results[batch] = compare_embeddings(torch_embeddings(model, tower, inputs), session.run(inputs))
    worst = max(result["max_abs_diff"] for result in results.values())
    if worst > tolerance:
        raise KitError(f"{path}: ONNX Runtime differs from PyTorch by {worst:.2e} (> {tolerance:g}); "
                       "try another --opset or report the model name")
    return results


def export_model(model, prefix, towers=("vision", "text"), opset=DEFAULT_OPSET, check=True):
    """Export the towers; returns {tower: {"path": …, "parity": {batch: stats}}}."""
    report = {}
    for tower in towers:
        if tower not in TOWERS:
            raise KitError(f"--towers: unknown tower {tower!r}; choose from vision, text")
        path = export_tower(model, tower, onnx_path(prefix, tower), opset)
        report[tower] = {"path": str(path), "parity": check_parity(model, tower, path) if check else None}
    return report


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
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = _exported(prefix, tower), int8_path(prefix, tower)
    from .models import quiet_root_logger

    with atomic_path(target) as tmp, warnings.catch_warnings(), quiet_root_logger():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
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
    from onnx import TensorProto, helper, numpy_helper

    source, target = _exported(prefix, tower), fp16_estimate_path(prefix, tower)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(source)))
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float16).astype(np.float32), init.name))
    float_values = {v.name for v in list(graph.value_info) + list(graph.output)
                    if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.op_type in ("Shape", "Constant"):
            continue
        for index, output in enumerate(node.output):
            if output not in float_values:
                continue
            raw = f"{output}__fp32"
            node.output[index] = raw
            nodes.append(helper.make_node("Cast", [raw], [f"{output}__fp16"], to=TensorProto.FLOAT16,
                                          name=f"{node.name}/to_fp16_{index}"))
            nodes.append(helper.make_node("Cast", [f"{output}__fp16"], [output], to=TensorProto.FLOAT,
                                          name=f"{node.name}/from_fp16_{index}"))
    del graph.node[:]
    graph.node.extend(nodes)
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    return target
