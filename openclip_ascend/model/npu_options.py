"""The options of the NPU-shaped graphs (npu_graph.py): their names, the recommended set, the graph names.

Kept apart from the graph code so the atc presets and the settings can name them without importing torch.
Each option is named in the graph's file name (``text_npu_padrows_qkv_eot.onnx``) and in its ONNX metadata
(``npu_graph``); the recommended set keeps the short names ``vision_npu`` / ``text_npu``.
"""

from ..files import KitError

# name → what it does (in this order in graph names, tags and messages)
OPTIONS = {
    "pad16": "tokens padded per sample to a multiple of 16, the pad keys masked in every attention (the kit's)",
    "padrows": "each sample's token rows padded to a multiple of 16 for the linear layers and sliced back to the "
               "real tokens before each attention (ModelZoo's pad_nz_block)",
    "nopad": "no padding: the linear layers run on the real token rows",
    "qkv": "one QKV MatMul, then Reshape [B, N, 3, heads, dim] → Transpose → Split → Squeeze: the pattern atc fuses "
           "into its LayerNorm+QKV operator",
    "eot": "text: the EOT row pooled by Equal(tokens, EOT id) as a one-hot row and a MatMul, no ArgMax; int32 tokens",
}
PADDINGS = ("pad16", "padrows", "nopad")
TEXT_ONLY = ("eot",)
RECOMMENDED = frozenset({"pad16", "eot"})
METADATA_KEY = "npu_graph"  # the ONNX metadata entry naming a graph's options


def ordered(options):
    return [name for name in OPTIONS if name in options]


def check_options(options, source="--npu-graph"):
    """``options`` (names) as a frozenset; a KitError naming ``source`` for an unknown name or not exactly one
    padding."""
    unknown = [name for name in options if name not in OPTIONS]
    if unknown:
        raise KitError(f"{source}: unknown option {unknown[0]!r}; options: "
                       + "; ".join(f"{name} ({text})" for name, text in OPTIONS.items()))
    paddings = [name for name in PADDINGS if name in options]
    if len(paddings) != 1:
        raise KitError(f"{source} {','.join(ordered(options))}: name exactly one padding ({', '.join(PADDINGS)}), "
                       f"e.g. {','.join(ordered(RECOMMENDED | set(options) - set(PADDINGS)))}")
    return frozenset(options)


def parse_graph_options(text):
    """``--npu-graph``'s value: empty for the recommended set, else comma-separated option names."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    return check_options(names) if names else RECOMMENDED


def tower_options(options, tower):
    """The options that act on ``tower``'s graph (``eot`` acts on the text tower only)."""
    return frozenset(name for name in options if tower == "text" or name not in TEXT_ONLY)


def graph_name(tower, options=RECOMMENDED):
    """``vision_npu`` / ``text_npu`` for the recommended set, else ``{tower}_npu_{options}``."""
    own = tower_options(options, tower)
    if own == tower_options(RECOMMENDED, tower):
        return f"{tower}_npu"
    return f"{tower}_npu_" + "_".join(ordered(own))


def describe(options):
    return ",".join(ordered(options))
