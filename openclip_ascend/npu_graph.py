"""Tower graphs shaped for the NPU's cube unit (``openclip_torch2onnx.py --npu-graph``), kept apart from
the CPU graph.

Huawei's ModelZoo recipe for the same ViT trunk (``ACL_PyTorch/contrib/cv/classfication/ViT_base``)
rewrites the graph two ways before atc; both are done here in the traced module, so the result is plain
ONNX at the usual opsets and the export's parity check guards it:

- the token axis is padded to a multiple of 16 (ViT-B-32: 50 → 64, B-16: 197 → 208, L-14-336: 577 →
  592; text: 77 → 80), the cube's fractal edge. Pad rows enter after the class/positional embedding
  (vision) or the token embedding (text); every attention masks them as keys, so no real token ever
  reads them, and they are never pooled — the embeddings equal the standard graph's;
- every linear layer runs as one 2-D product ``[B·N, D] × [D, E]`` (Reshape, Gemm, Reshape) instead
  of a batched 3-D MatMul; attention itself stays 4-D.
"""

import torch
import torch.nn.functional as F

from .towers import attend, standard_block

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


def _mlp(mlp, x):
    for layer in mlp:
        x = linear_2d(x, layer.weight, layer.bias) if isinstance(layer, torch.nn.Linear) else layer(x)
    return x


def _block(block, x, mask, select=None):
    """open_clip's ResidualAttentionBlock with 2-D products; ``select`` keeps only some query rows (the
    pooled token in the last block)."""
    identity = torch.nn.Identity()
    ls_1, ls_2 = getattr(block, "ls_1", identity), getattr(block, "ls_2", identity)
    normed = block.ln_1(x)
    queries = select(normed) if select else normed
    rows = (select(x) if select else x) + ls_1(attend(block.attn, queries, normed, mask, linear=linear_2d))
    return rows + ls_2(_mlp(block.mlp, block.ln_2(rows)))


def _key_mask(real, padded, dtype):
    """Additive [padded] mask: 0 for the real keys, -inf for the pad rows."""
    mask = torch.zeros(padded, dtype=dtype)
    mask[real:] = float("-inf")
    return mask


def vision_embedding(visual, image):
    """open_clip's VisionTransformer up to the pooled, projected class token, on padded tokens."""
    x = visual.conv1(image)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    real = int(x.shape[1])
    padded = padded_length(real)
    x = F.pad(x, (0, 0, 0, padded - real))
    mask = _key_mask(real, padded, x.dtype)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = _block(block, x, mask)
    pooled = _block(blocks[-1], x, mask, select=lambda rows: rows[:, :1])[:, 0]
    pooled = visual.ln_post(pooled)  # per-token norm: the same before or after taking the class token
    return pooled @ visual.proj if visual.proj is not None else pooled


def text_embedding(model, text):
    """open_clip's CLIP.encode_text on tokens padded to a multiple of 16; the causal mask already keeps
    every real token from the pad rows after it."""
    cast_dtype = model.transformer.get_cast_dtype()
    real = int(text.shape[1])
    padded = padded_length(real)
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:real].to(cast_dtype)
    x = F.pad(x, (0, 0, 0, padded - real))
    causal = torch.full((padded, padded), float("-inf"), dtype=x.dtype).triu(1)
    eot = text.argmax(dim=-1)
    batch = torch.arange(x.shape[0])
    blocks = model.transformer.resblocks
    for block in blocks[:-1]:
        x = _block(block, x, causal)
    x = _block(blocks[-1], x, causal[eot].unsqueeze(1).unsqueeze(1),
               select=lambda rows: rows[batch, eot].unsqueeze(1))[:, 0]
    x = model.ln_final(x)
    if model.text_projection is None:
        return x
    projection = model.text_projection
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def npu_tower_module(model, tower):
    """The tower's normalised embedding through the NPU-shaped forward (same I/O as ``tower_module``)."""
    class NpuVision(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, image):
            return F.normalize(vision_embedding(self.model.visual, image), dim=-1)

    class NpuText(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, text):
            return F.normalize(text_embedding(self.model, text.to(torch.int32)), dim=-1)

    return (NpuVision if tower == "vision" else NpuText)().eval()
