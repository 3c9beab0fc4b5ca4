"""The two towers as modules with the reference I/O contract, and the inputs that exercise them.

Each tower's forward is one normalised embedding: ``image`` float32 [B,3,H,W] → ``image_embed`` and
``text`` int64 [B,L] → ``text_embed``. The export, the PyTorch reference backend and the tests share
these modules, so what is exported is what is compared.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .text_lengths import DYNAMIC_LENGTH


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


def tower_module(model, tower, pooled_last_block=False, length=None):
    """A module whose forward is one tower's normalised embedding (one input, one output).

    ``pooled_last_block`` runs the last transformer block for the pooled token only (see
    ``_pooled_vision`` and ``_trimmed_text``) where the architecture allows it; open_clip's own
    encode_image/encode_text otherwise, and always for the PyTorch reference. ``length`` (text only):
    the tokens the graph takes — an int for a static shorter graph, ``DYNAMIC_LENGTH`` for any; see
    ``trims_exactly``.
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
            if length is not None and not trims_exactly(model):
                raise ValueError("this text tower reads every token; it has no shorter graph")

        def forward(self, text):
            # int32 tokens make the graph's ArgMax (EOT pooling) int32, which every ONNX Runtime
            # and converter supports; ids < 49408 so the result is unchanged.
            text = text.to(torch.int32)
            if self.pooled or length is not None:
                return F.normalize(_trimmed_text(self.model, text, self.pooled, length != DYNAMIC_LENGTH), dim=-1)
            return self.model.encode_text(text, normalize=True)

    return (VisionTower if tower == "vision" else TextTower)().eval()


def trims_exactly(model):
    """Whether the text embedding depends only on the tokens up to the EOT (causal attention, argmax
    pooling), so a caption runs exactly as far as its EOT. Towers that pool or attend over every token
    (SigLIP, Hugging Face text towers) keep the full length."""
    return (hasattr(model, "token_embedding") and hasattr(model, "positional_embedding")
            and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", "argmax") == "argmax")


def standard_block(block):
    """Whether ``block`` is open_clip's standard pre-norm self-attention block (either layout)."""
    from open_clip.transformer import ResidualAttentionBlock

    return (type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
            and plain_self_attention(block.attn))


def _plain_block(block):
    """A standard block over batch-first input (open_clip ≥ 2.27)."""
    return standard_block(block) and block.attn.batch_first


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


def _pooled_last_block(block, x, select, mask=None, static=True):
    """``block(x)`` for the rows ``select`` picks ([B, L, D] → [B, 1, D]): every row's keys and values,
    one query. Only the pooled token reaches the embedding, so the last block's other rows (its
    out-projection and MLP for L−1 of L tokens: ≈ 7 % of a ViT-B-32 tower) were computed for nothing."""
    normed = block.ln_1(x)
    mask = mask.to(x.dtype) if mask is not None else None
    rows = select(x) + block.ls_1(attend(block.attn, select(normed), normed, mask, static))
    return rows + block.ls_2(block.mlp(block.ln_2(rows)))


def _pooled_vision(visual, image):
    """open_clip's VisionTransformer.forward with the class token alone through the last block."""
    x = visual._embeds(image)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    pooled, _ = visual._pool(_pooled_last_block(blocks[-1], x, lambda rows: rows[:, :1]))
    return pooled @ visual.proj if visual.proj is not None else pooled


def _trimmed_text(model, text, pooled, static=True):
    """open_clip's CLIP.encode_text for tokens [B, n] of any n ≤ the context: the positional
    embedding and causal mask cut to n (constants when ``static``, else sized from the input); with
    ``pooled`` the EOT token alone goes through the last block."""
    length = int(text.shape[1]) if static else text.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    causal = model.attn_mask[:length, :length]
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    eot = text.argmax(dim=-1)
    batch = torch.arange(x.shape[0])
    if pooled:
        blocks = model.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x, attn_mask=causal)
        x = _pooled_last_block(blocks[-1], x, lambda rows: rows[batch, eot].unsqueeze(1),
                               causal[eot].unsqueeze(1).unsqueeze(1), static)[:, 0]
    else:  # open_clip before 2.27 runs its transformer sequence-first
        batch_first = getattr(model.transformer, "batch_first", False)
        x = model.transformer(x if batch_first else x.permute(1, 0, 2), attn_mask=causal)
        x = (x if batch_first else x.permute(1, 0, 2))[batch, eot]
    x = model.ln_final(x)
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


def input_geometry(model):
    """(image size (H, W), context length) read from the model itself."""
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return size, int(model.context_length if hasattr(model, "context_length") else model.text.context_length)


def example_inputs(model, tower, batch, seed=0, max_tokens=None):
    """Fresh inputs: normalised-range pixels, or token rows SOT … EOT 0 … of random lengths (the EOT
    within the first ``max_tokens`` positions when given)."""
    rng = np.random.default_rng(seed)
    (height, width), context_length = input_geometry(model)
    if tower == "vision":
        return rng.standard_normal((batch, 3, height, width)).astype(np.float32)
    tokens = np.zeros((batch, context_length), dtype=np.int64)
    for row in tokens:
        length = int(rng.integers(1, min(max_tokens or context_length, context_length) - 1))
        row[0] = 49406
        row[1:length + 1] = rng.integers(1, 49406, size=length)
        row[length + 1] = 49407
    return tokens


def attend(attention, query, context, attn_mask=None, static=True):
    """nn.MultiheadAttention (batch-first, packed in-projection) of ``query`` [B, Lq, D] over
    ``context`` [B, L, D], as separate q/k/v projections and 4-D MatMul/Softmax: no 5-D transposes
    for atc, fewer copies for ONNX Runtime (≈ 5 % faster on ViT-B-32), the same result within float
    rounding (the export parity check guards it). ``attn_mask`` broadcasts against [B, heads, Lq, L].
    ``static``: the sequence lengths are fixed by the model; as Python ints (and -1 for the batch) they
    become constant Reshape targets instead of Shape/Gather/Concat chains in the graph."""
    heads = attention_heads(attention, query, context, attn_mask, static)
    return F.linear(heads, attention.out_proj.weight, attention.out_proj.bias)


def attention_heads(attention, query, context, attn_mask=None, static=True, linear=F.linear):
    """``attend`` up to the out-projection: the heads merged back to [B, Lq, D]. ``linear``: how the
    projections multiply (the NPU graph's 2-D products)."""
    queries, length, width = query.shape[1], context.shape[1], int(context.shape[2])
    if static:
        queries, length = int(queries), int(length)
    heads = attention.num_heads
    head_width = width // heads
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3) if attention.in_proj_bias is not None else (None, None, None)
    q = linear(query, w_q, b_q).reshape(-1, queries, heads, head_width).transpose(1, 2)
    k = linear(context, w_k, b_k).reshape(-1, length, heads, head_width).permute(0, 2, 3, 1)
    v = linear(context, w_v, b_v).reshape(-1, length, heads, head_width).transpose(1, 2)
    return merge_heads(scaled_attention(q, k, v, attn_mask), queries, width)


def scaled_attention(q, keys_t, v, attn_mask=None):
    """softmax(q·kᵀ·d^-½ + mask)·v per head: q [B, H, Lq, d], ``keys_t`` the keys transposed [B, H, d, L],
    v [B, H, L, d] → [B, H, Lq, d]. A boolean mask is True where a key is hidden."""
    scores = (q @ keys_t) * (int(q.shape[-1]) ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(-1) @ v


def merge_heads(out, queries, width):
    """[B, H, Lq, d] → [B, Lq, H·d]."""
    return out.transpose(1, 2).reshape(-1, queries, width)


def plain_self_attention(module):
    """nn.MultiheadAttention with one packed in-projection and nothing ``attend`` leaves out (either layout)."""
    return (isinstance(module, torch.nn.MultiheadAttention) and module._qkv_same_embed_dim
            and module.bias_k is None and not module.add_zero_attn and module.dropout == 0.0)
