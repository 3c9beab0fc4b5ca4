"""Step 2: export an open_clip model's towers to ONNX with the reference I/O contract, and check them.

Each graph has one input and one L2-normalised output with a dynamic batch axis:
``image`` float32 [B,3,H,W] → ``image_embed`` and ``text`` int64 [B,L] → ``text_embed``.
"""

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .files import KitError, staging_dir
from .metrics import compare_embeddings

DEFAULT_OPSET = 14  # lowest the TorchScript exporter handles with torch 2.x attention; ATC in CANN 7 takes 9–18
# CANN's ONNX parser registers every op these graphs use at opsets 11, 13, 14 and 17; at 18 ReduceL2 is
# missing, from 19 nothing (CANN 5.x/6.0 parse up to 13)
OPSETS = range(11, 18)
PARITY_TOLERANCE = 1e-4
# protobuf cannot serialise a message of 2 GiB; graphs with more weight bytes (ViT-H-14's vision tower,
# ViT-bigG) keep them in "{name}.onnx.data" beside the graph, as ONNX external data
EXTERNAL_DATA_BYTES = 1_900_000_000


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


def tower_module(model, tower, pooled_last_block=False):
    """A module whose forward is one tower's normalised embedding (one input, one output).

    ``pooled_last_block`` runs the last transformer block for the pooled token only (see
    ``_pooled_vision`` and ``_pooled_text``) where the architecture allows it; open_clip's own
    encode_image/encode_text otherwise, and always for the PyTorch reference.
    """
    class VisionTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.pooled = pooled_last_block and _pools_class_token(model.visual)

        def forward(self, image):
            if self.pooled:
                return F.normalize(_pooled_vision(self.model.visual, image), dim=-1)
            return self.model.encode_image(image, normalize=True)

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.pooled = pooled_last_block and _pools_eot_token(model)

        def forward(self, text):
            # int32 tokens make the graph's ArgMax (EOT pooling) int32, which every ONNX Runtime
            # and converter supports; ids < 49408 so the result is unchanged.
            text = text.to(torch.int32)
            if self.pooled:
                return F.normalize(_pooled_text(self.model, text), dim=-1)
            return self.model.encode_text(text, normalize=True)

    return (VisionTower if tower == "vision" else TextTower)().eval()


def _plain_block(block):
    """Whether ``block`` is open_clip's standard pre-norm self-attention block over batch-first input."""
    from open_clip.transformer import ResidualAttentionBlock

    return (type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
            and _plain_self_attention(block.attn))


def _pools_class_token(visual):
    from open_clip.transformer import VisionTransformer

    # getattr: open_clip releases before 3.x lack some of these (and run the sequence-first layout)
    return (isinstance(visual, VisionTransformer) and getattr(visual, "attn_pool", None) is None
            and getattr(visual, "pool_type", None) == "tok" and not getattr(visual, "output_tokens", False)
            and getattr(visual.transformer, "batch_first", False) and hasattr(visual, "_embeds")
            and hasattr(visual, "_pool") and _plain_block(visual.transformer.resblocks[-1]))


def _pools_eot_token(model):
    """open_clip's built-in CLIP text tower with argmax (EOT) pooling."""
    return (hasattr(model, "token_embedding") and getattr(model, "text_pool_type", None) == "argmax"
            and getattr(model.transformer, "batch_first", False) and _plain_block(model.transformer.resblocks[-1]))


def _pooled_last_block(block, x, select, mask=None):
    """``block(x)`` for the rows ``select`` picks ([B, L, D] → [B, 1, D]): every row's keys and values,
    one query. Only the pooled token reaches the embedding, so the last block's other rows (its
    out-projection and MLP for L−1 of L tokens: ≈ 7 % of a ViT-B-32 tower) were computed for nothing."""
    normed = block.ln_1(x)
    mask = mask.to(x.dtype) if mask is not None else None
    rows = select(x) + block.ls_1(_attend(block.attn, select(normed), normed, mask))
    return rows + block.ls_2(block.mlp(block.ln_2(rows)))


def _pooled_vision(visual, image):
    """open_clip's VisionTransformer.forward with the class token alone through the last block."""
    x = visual._embeds(image)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    pooled, _ = visual._pool(_pooled_last_block(blocks[-1], x, lambda rows: rows[:, :1]))
    return pooled @ visual.proj if visual.proj is not None else pooled


def _pooled_text(model, text):
    """open_clip's CLIP.encode_text with the EOT token alone through the last block."""
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding.to(cast_dtype)
    blocks = model.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x, attn_mask=model.attn_mask)
    eot = text.argmax(dim=-1)
    batch = torch.arange(x.shape[0])
    mask = model.attn_mask[eot].reshape(-1, 1, 1, int(x.shape[1])) if model.attn_mask is not None else None
    x = model.ln_final(_pooled_last_block(blocks[-1], x, lambda rows: rows[batch, eot].unsqueeze(1), mask))[:, 0]
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


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


def _attend(attention, query, context, attn_mask=None):
    """nn.MultiheadAttention (batch-first, packed in-projection) of ``query`` [B, Lq, D] over
    ``context`` [B, L, D], as separate q/k/v projections and 4-D MatMul/Softmax: no 5-D transposes
    for atc, fewer copies for ONNX Runtime (≈ 5 % faster on ViT-B-32), the same result within float
    rounding (the export parity check guards it). ``attn_mask`` broadcasts against [B, heads, Lq, L]."""
    # sequence lengths and width are fixed by the model: as Python ints (and -1 for the batch) they
    # become constant Reshape targets instead of Shape/Gather/Concat chains in the graph
    queries, length, width = int(query.shape[1]), int(context.shape[1]), int(context.shape[2])
    heads = attention.num_heads
    head_width = width // heads
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3) if attention.in_proj_bias is not None else (None, None, None)
    q = F.linear(query, w_q, b_q).reshape(-1, queries, heads, head_width).transpose(1, 2)
    k = F.linear(context, w_k, b_k).reshape(-1, length, heads, head_width).permute(0, 2, 3, 1)
    v = F.linear(context, w_v, b_v).reshape(-1, length, heads, head_width).transpose(1, 2)
    scores = (q @ k) * (head_width ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, queries, width)
    return attention.out_proj(out)


def _plain_self_attention(module):
    return (isinstance(module, torch.nn.MultiheadAttention) and module.batch_first and module._qkv_same_embed_dim
            and module.bias_k is None and not module.add_zero_attn and module.dropout == 0.0)


@contextlib.contextmanager
def plain_attention(model):
    """Route every batch-first self-attention with no mask or a 2-D one through ``_attend`` while exporting."""
    patched = []
    for module in model.modules():
        if _plain_self_attention(module):
            original = module.forward

            def forward(query, key, value, *args, _module=module, _original=original, **kwargs):
                mask = kwargs.get("attn_mask")
                if (query is key is value and not args and kwargs.get("key_padding_mask") is None
                        and (mask is None or mask.dim() == 2)):
                    return _attend(_module, query, query, mask), None
                return _original(query, key, value, *args, **kwargs)

            module.forward = forward
            patched.append((module, original))
    try:
        yield
    finally:
        for module, original in patched:
            module.forward = original


def given_examples(model, model_name, pretrained=None, image=None, text=None):
    """The reference's ``--image`` / ``--text`` tracing inputs as {tower: (1, …) array}, made exactly as
    step 1 makes its arrays."""
    examples = {}
    if image:
        from PIL import Image

        from .models import preprocess_config
        from .transforms import ImagePreprocessor

        try:
            with Image.open(image) as img:
                pixels = ImagePreprocessor(preprocess_config(model, model_name, pretrained))(img)
        except (OSError, ValueError) as exc:
            raise KitError(f"--image {image}: cannot be read as an image ({exc}); pass a JPEG or PNG file") from exc
        examples["vision"] = pixels[None]
    if text:
        from .transforms import Tokenizer

        examples["text"] = np.ascontiguousarray(Tokenizer(model_name)([text])[:1])
    return examples


def _tracing_input(model, tower, given=None):
    """A batch of 2 (a dynamic batch axis cannot be traced from a size-1 example): the given input
    first where there is one."""
    fresh = example_inputs(model, tower, batch=2)
    return fresh if given is None else np.concatenate([given, fresh[:1]]).astype(fresh.dtype)


def export_tower(model, tower, path, opset=DEFAULT_OPSET, rewrite=True, given=None):
    """Write ``path`` (atomically) with the tower's graph; dynamic batch, one input, one output.

    ``rewrite=False`` exports open_clip's forward as torch translates it (torch's own
    MultiheadAttention, every row through the last block): the baseline the benchmark compares with.
    ``given`` is a (1, …) input to trace with (the reference's ``--image`` / ``--text``).
    """
    import onnx

    spec = TOWERS[tower]
    path = Path(path)
    module = tower_module(model, tower, pooled_last_block=rewrite)
    example = torch.from_numpy(_tracing_input(model, tower, given))
    # no torch.no_grad() here: under it nn.MultiheadAttention takes its fused fast path, an op the
    # TorchScript exporter cannot translate; with grad enabled it traces as plain MatMul/Softmax
    attention = plain_attention(model) if rewrite else contextlib.nullcontext()
    with staging_dir(path) as work, warnings.catch_warnings(), attention:
        # the exporter's and tracer's notes on open_clip internals are not actionable for a user
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        raw = work / "graph.onnx"  # beside it, one file per weight if the graph exceeds 2 GB
        torch.onnx.export(
            module, (example,), str(raw), dynamo=False, opset_version=opset,
            input_names=[spec.input_name], output_names=[spec.output_name],
            dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}},
            do_constant_folding=True,
        )
        graph_model = onnx.load(str(raw))
        _fix_output_width(graph_model, module(example).shape[-1])
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


def check_parity(model, tower, path, batch_sizes=(1, 3), tolerance=PARITY_TOLERANCE, given=None):
    """ONNX Runtime vs PyTorch on fresh inputs of each batch size (and on ``given``, keyed ``"given"``);
    raises KitError when max abs diff exceeds ``tolerance``."""
    from .backends import OnnxRuntimeSession

    session = OnnxRuntimeSession(path)
    cases = [(batch, example_inputs(model, tower, batch, seed=seed)) for seed, batch in enumerate(batch_sizes, 1)]
    results = {}
    for key, inputs in cases + ([("given", given)] if given is not None else []):
        results[key] = compare_embeddings(torch_embeddings(model, tower, inputs), session.run(inputs))
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

    from .models import quiet_root_logger

    source, target = _exported(prefix, tower), int8_path(prefix, tower)
    with staging_dir(target) as work, warnings.catch_warnings(), quiet_root_logger():
        warnings.simplefilter("ignore")
        staged = work / "int8.onnx"
        quantize_dynamic(str(source), str(staged), weight_type=QuantType.QInt8,
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
    from onnx import TensorProto, helper, numpy_helper

    source, target = _exported(prefix, tower), fp16_estimate_path(prefix, tower)
    # value types from the graph alone: shape inference refuses a model holding > 2 GB of weights
    shapes = onnx.shape_inference.infer_shapes(onnx.load(str(source), load_external_data=False)).graph
    model = onnx.load(str(source))
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float16).astype(np.float32), init.name))
    float_values = {v.name for v in list(shapes.value_info) + list(shapes.output)
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
    return save_onnx(model, target)
