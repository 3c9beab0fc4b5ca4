"""Tower graphs shaped for the NPU's cube unit (``openclip_torch2onnx.py --npu-graph [OPTION,…]``), kept
apart from the CPU graph.

Huawei's ModelZoo recipes for the same ViT trunk (``ACL_PyTorch/contrib/cv/classfication/ViT/opt_vit.py``,
``ACL_PyTorch/built-in/foundation_models/Chinese_CLIP/opt_img_onnx.py``) rewrite the ONNX graph before
atc; here the rewrites are made in the traced module, so the result is plain ONNX at the usual opsets and
the export's parity check guards it. Every NPU graph runs its linear layers as 2-D products
``[B·N, D] × [D, E]`` (Reshape, Gemm, Reshape) instead of batched 3-D MatMuls; the options
(npu_options.py) choose the rest:

- a padding of the token axis to a multiple of 16, the cube's fractal edge (ViT-B-32: 50 → 64, B-16:
  197 → 208, L-14-336: 577 → 592; text: 77 → 80). ``pad16`` pads each sample after its embeddings and masks
  the pad rows as keys in every attention, so no real token reads them; ``padrows`` (ModelZoo's
  ``pad_nz_block``) runs the linear layers on the padded rows but slices them back to the real tokens
  before each attention, which then needs no pad mask; ``nopad`` leaves the rows as they are. Pad rows are
  never pooled: the embeddings equal the standard graph's;
- ``qkv``: q, k and v from one 3-D QKV MatMul + Add, then Reshape [B, N, 3, heads, dim] → Transpose
  (2, 0, 3, 1, 4) → Split → Squeeze, the pattern atc's ViT LayerNorm+QKV fusion takes (ModelZoo's
  ``adapt_for_layernormqkv``); without it q, k and v are three 2-D products;
- ``eot`` (text): the EOT row found without ArgMax — ``Equal(tokens, EOT id)`` is a one-hot row, a MatMul
  with the hidden states pools it, and the EOT query's causal mask is ``position > one-hot · positions`` —
  on int32 token input. Exact for open_clip's tokenizer, which writes exactly one EOT, the vocabulary's
  largest id, also when it truncates (``SimpleTokenizer.__call__``). ArgMax on integer ids is not in every
  chip's AI-core operator library (CANN documents it for float16/float only), and fp16 ArgMax is a known
  CLIP accuracy complaint (ailia-models #1389).
"""

import torch
import torch.nn.functional as F

from .npu_options import PADDINGS, RECOMMENDED, tower_options
from .towers import attention_heads, merge_heads, scaled_attention, standard_block

FRACTAL = 16


def padded_length(tokens, multiple=FRACTAL):
    return -(-int(tokens) // multiple) * multiple


def _plain_block(block):
    """A standard block (either layout: the rewrite runs its own loop) whose MLP is a plain Sequential."""
    return standard_block(block) and isinstance(block.mlp, torch.nn.Sequential)


def supports(model, tower):
    """Whether the rewrite reproduces ``tower`` exactly: open_clip's ViT with class-token pooling, or its
    CLIP text tower (causal mask, EOT pooling), built of standard pre-norm blocks."""
    from open_clip.transformer import VisionTransformer

    if tower == "vision":
        visual = model.visual
        return (isinstance(visual, VisionTransformer) and getattr(visual, "attn_pool", None) is None
                and getattr(visual, "pool_type", "tok") == "tok" and not getattr(visual, "output_tokens", False)
                and all(_plain_block(block) for block in visual.transformer.resblocks))
    from .towers import trims_exactly

    return trims_exactly(model) and all(_plain_block(block) for block in model.transformer.resblocks)


def linear_2d(x, weight, bias=None):
    """``F.linear`` over the last axis as one 2-D product: [..., N, D] → [B·N, D] × [D, E] → [..., N, E]."""
    rows, width = int(x.shape[-2]), int(x.shape[-1])
    out = F.linear(x.reshape(-1, width), weight, bias)
    return out.reshape(-1, rows, int(weight.shape[0]))


def layer_norm(norm, x):
    """open_clip's LayerNorm without its cast back to the input's dtype (a no-op for an fp32 export, but a Cast
    node between the LayerNorm and the product after it, where atc's fusion patterns want them adjacent)."""
    if not isinstance(norm, torch.nn.LayerNorm):  # nn.Identity where a model has none (no_ln_pre)
        return norm(x)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _mlp(mlp, x):
    for layer in mlp:
        x = linear_2d(x, layer.weight, layer.bias) if isinstance(layer, torch.nn.Linear) else layer(x)
    return x


class Layout:
    """How a tower's blocks run under ``options``: ``real`` tokens, ``rows`` after padding, and the tokens
    an attention sees (``keys``: the real ones under ``padrows``)."""

    def __init__(self, options, real):
        self.padding = next(name for name in PADDINGS if name in options)
        self.fused_qkv = "qkv" in options
        self.real = int(real)
        self.rows = self.real if self.padding == "nopad" else padded_length(real)
        self.keys = self.rows if self.padding == "pad16" else self.real

    def pad(self, x):
        """[B, n, D] → [B, rows, D] with zero rows after the n."""
        return F.pad(x, (0, 0, 0, self.rows - int(x.shape[1]))) if int(x.shape[1]) < self.rows else x


def _fused_qkv(attention, x):
    """q, k, v [B, heads, N, dim] from one [B, N, D] × [D, 3D] MatMul (3-D, as the fused operator reads it)
    + Add, then Reshape [B, N, 3, heads, dim] → Transpose (2, 0, 3, 1, 4) → Split → Squeeze."""
    tokens, width, heads = int(x.shape[1]), int(x.shape[2]), attention.num_heads
    qkv = x @ attention.in_proj_weight.t()
    if attention.in_proj_bias is not None:
        qkv = qkv + attention.in_proj_bias
    return qkv.reshape(-1, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)  # Split, Squeeze ×3


def _attention(attention, normed, mask, fused, pool):
    """The block's attention up to its out-projection (heads merged, [B, queries, D]); ``pool`` keeps only
    the pooled token's query (the last block)."""
    if not fused:
        return attention_heads(attention, pool.rows(normed) if pool else normed, normed, mask, linear=linear_2d)
    q, k, v = _fused_qkv(attention, normed)
    q = pool.heads(q) if pool else q
    return merge_heads(scaled_attention(q, k.transpose(-1, -2), v, mask), int(q.shape[2]), int(normed.shape[2]))


def _block(block, x, layout, mask, pool=None):
    """open_clip's ResidualAttentionBlock on ``layout``'s rows, with 2-D products; ``pool`` (the last block)
    keeps only the pooled token's row."""
    identity = torch.nn.Identity()
    ls_1, ls_2 = getattr(block, "ls_1", identity), getattr(block, "ls_2", identity)
    normed = layer_norm(block.ln_1, x[:, :layout.keys] if layout.keys < layout.rows else x)
    heads = _attention(block.attn, normed, mask, layout.fused_qkv, pool)
    if pool:
        rows = pool.rows(x)
    else:
        rows, heads = x, layout.pad(heads)  # padrows: the out-projection runs on the padded rows
    rows = rows + ls_1(linear_2d(heads, block.attn.out_proj.weight, block.attn.out_proj.bias))
    return rows + ls_2(_mlp(block.mlp, layer_norm(block.ln_2, rows)))


def _encode(blocks, x, layout, mask, pool):
    """The blocks over the embedded tokens [B, real, D] → the pooled row [B, D] after the last block."""
    x = layout.pad(x)
    for block in blocks[:-1]:
        x = _block(block, x, layout, mask)
    return _block(blocks[-1], x, layout, pool.key_mask(mask), pool)[:, 0]


class ClassToken:
    """The vision tower's pooled token: the first."""

    @staticmethod
    def rows(x):
        return x[:, :1]

    @staticmethod
    def heads(q):
        return q[:, :, :1]

    @staticmethod
    def key_mask(mask):
        return mask


class EotByArgMax:
    """The EOT token as open_clip finds it: the position of the row's largest id."""

    def __init__(self, text):
        self.eot = text.argmax(dim=-1)
        self.batch = torch.arange(text.shape[0])

    def rows(self, x):
        return x[self.batch, self.eot].unsqueeze(1)

    def heads(self, q):
        return q[self.batch, :, self.eot].unsqueeze(2)

    def key_mask(self, causal):
        return causal[self.eot].unsqueeze(1).unsqueeze(1)


class EotByOneHot:
    """The EOT token without ArgMax: ``Equal(tokens, eot_id)`` as a one-hot row (zeros over pad rows)."""

    def __init__(self, text, eot_id, dtype):
        self.one_hot = (text == torch.tensor(eot_id, dtype=text.dtype)).to(dtype)  # no Cast of the tokens first

    def _over(self, tokens):
        extra = int(tokens) - int(self.one_hot.shape[1])
        return F.pad(self.one_hot, (0, extra)) if extra else self.one_hot

    def rows(self, x):
        return self._over(x.shape[1]).unsqueeze(1) @ x  # [B, 1, N] × [B, N, D]

    def heads(self, q):
        return self._over(q.shape[2])[:, None, None] @ q  # [B, 1, 1, N] × [B, heads, N, dim]

    def key_mask(self, causal):
        """The EOT query's causal row, True where a key is hidden: every key after the EOT."""
        keys = int(causal.shape[-1])
        positions = torch.arange(keys, dtype=self.one_hot.dtype)
        return (positions > (self._over(keys) @ positions)[:, None])[:, None, None]


def vision_embedding(visual, image, options=RECOMMENDED):
    """open_clip's VisionTransformer up to the pooled, projected class token, laid out by ``options``."""
    x = visual.conv1(image)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = layer_norm(visual.ln_pre, x)
    layout = Layout(options, x.shape[1])
    mask = None
    if layout.keys > layout.real:  # pad16: the pad rows hidden as keys
        mask = torch.tensor([0.0] * layout.real + [float("-inf")] * (layout.keys - layout.real), dtype=x.dtype)
    pooled = layer_norm(visual.ln_post, _encode(visual.transformer.resblocks, x, layout, mask, ClassToken()))
    return pooled @ visual.proj if visual.proj is not None else pooled


def eot_id(model):
    """The EOT token's id: argmax pooling pools the row's largest id, and open_clip's tokenizer gives the EOT
    the vocabulary's largest (49407 of 49408)."""
    return int(model.token_embedding.num_embeddings) - 1


def text_embedding(model, text, options=RECOMMENDED):
    """open_clip's CLIP.encode_text laid out by ``options``; the causal mask keeps every real token from
    the pad rows after it."""
    cast_dtype = model.transformer.get_cast_dtype()
    real = int(text.shape[1])
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:real].to(cast_dtype)
    layout = Layout(options, real)
    causal = torch.full((layout.keys, layout.keys), float("-inf"), dtype=x.dtype).triu(1)
    pool = EotByOneHot(text, eot_id(model), x.dtype) if "eot" in options else EotByArgMax(text)
    x = layer_norm(model.ln_final, _encode(model.transformer.resblocks, x, layout, causal, pool))
    if model.text_projection is None:
        return x
    projection = model.text_projection
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def npu_tower_module(model, tower, options=RECOMMENDED):
    """The tower's normalised embedding through the NPU-shaped forward (the I/O of ``tower_module``; text
    with ``eot`` takes int32 tokens: ``input_dtype``)."""
    own = tower_options(options, tower)

    class NpuVision(torch.nn.Module):
        input_dtype = torch.float32

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, image):
            return F.normalize(vision_embedding(self.model.visual, image, own), dim=-1)

    class NpuText(torch.nn.Module):
        # int32 tokens (ids < 49408): as ModelZoo's current CLIP recipes feed them; the ArgMax form casts
        # its int64 input, since an int32 ArgMax is what every ONNX Runtime and converter supports
        input_dtype = torch.int32 if "eot" in own else torch.int64

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, text):
            tokens = text if text.dtype == torch.int32 else text.to(torch.int32)  # no Cast of int32 input
            return F.normalize(text_embedding(self.model, tokens, own), dim=-1)

    return (NpuVision if tower == "vision" else NpuText)().eval()
