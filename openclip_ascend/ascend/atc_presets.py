"""Named atc flag sets and NPU-graph options for the variant sweep, combinable with ``+`` (``npu+qkv+hp``).

- ``base``: the reference command, nothing added.
- ``npu``: the NPU-shaped graphs with the recommended options (``{tower}_npu.onnx``: tokens padded per
  sample to 16 and masked, 2-D products, text EOT pooled without ArgMax on int32 tokens; npu_graph.py).
- ``padrows`` / ``nopad``: the NPU graphs padded as ModelZoo pads (rows sliced back to the real tokens before
  each attention) or not at all, instead of ``npu``'s per-sample padding; ``qkv``: q, k and v from one
  product in the pattern atc fuses into its LayerNorm+QKV operator; ``argmax``: the text tower pools with
  ArgMax as the standard graph does. Each implies ``npu``; the graph names its options
  (``text_npu_padrows_qkv_eot.onnx``, npu_options.py).
- ``hp``: ``--op_select_implmode=high_performance`` for the op types in the graph that have a
  high-performance implementation, as ModelZoo's CLIP recipes compile: ``Gelu`` (torch's exact GELU is
  exported as Div/Erf/Add/Mul/Mul, which atc's GeluONNXFusionPass turns into Gelu) and ``Sigmoid`` (QuickGELU,
  ``x·sigmoid(1.702x)``, of OpenAI-weight and ``*-quickgelu`` models). A graph with neither gets no flag and a
  note saying so.
- ``smallch``: ``--enable_small_channel=1`` (vision: the 3-channel first convolution), as ModelZoo's
  ViT_base recipe compiles.
- ``nofuseattn``: a ``--fusion_switch_file`` turning off ``ZAttentionLnQKVONNXFusionPass`` and
  ``ZAttentionScoreFusionPass``, as ModelZoo's Chinese_CLIP text recipe does; the file is CANN's
  ``{"Switch": {"GraphFusion": {pass: "off"}, "UBFusion": {}}}``.
- ``aipp``: ``--insert_op_conf`` with the static AIPP config ``openclip_preprocess.py --uint8`` writes
  (vision: the OM takes uint8 [B, H, W, 3] and normalises on the chip; aipp.py).

``auto`` stands for a list that tries each graph option and preset once (``AUTO_VARIANTS``); the sweep
chooses per tower, so one list tries every option on and off for each tower. Each variant compiles under
its own tag (``…_vision_npu_padrows_qkv_bs64_padrows_qkv_hp.om``), so variants never share a name.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..files import KitError, write_text
from ..model.npu_options import PADDINGS, RECOMMENDED, check_options, describe, graph_name, tower_options

IMPLMODE_OPS = {"Erf": "Gelu", "Sigmoid": "Sigmoid"}  # ONNX op type in the graph → the op atc compiles it as
ATTENTION_FUSION_PASSES = ("ZAttentionLnQKVONNXFusionPass", "ZAttentionScoreFusionPass")
PRESETS = {
    "base": "the reference atc command",
    "npu": "the NPU-shaped graphs, recommended options: " + describe(RECOMMENDED),
    "padrows": "NPU graphs padded as ModelZoo pads (rows sliced back before each attention) instead of pad16",
    "nopad": "NPU graphs without padding instead of pad16",
    "qkv": "NPU graphs with q, k, v from one product in the pattern atc fuses (LayerNorm+QKV)",
    "argmax": "NPU text graph pooling with ArgMax (int64 tokens) instead of eot",
    "hp": "high-performance implmode for the graph's Gelu / Sigmoid",
    "smallch": "--enable_small_channel=1 (vision)",
    "nofuseattn": "attention fusion passes off (--fusion_switch_file)",
    "aipp": "uint8 image input, normalised by AIPP (vision; --insert_op_conf)",
}
GRAPH_PRESETS = ("padrows", "nopad", "qkv", "argmax")  # each implies npu
AUTO = "auto"
AUTO_VARIANTS = ("base,npu,npu+hp,npu+qkv+hp,npu+padrows+hp,npu+padrows+qkv+hp,npu+padrows+qkv+hp+nofuseattn,"
                 "npu+nopad+hp,npu+nopad+qkv+hp,npu+argmax+hp,npu+hp+smallch")


@dataclass(frozen=True)
class Variant:
    name: str  # as given: npu+hp
    parts: tuple

    @property
    def tag(self):
        """The OM name suffix: empty for base, else the parts joined by ``_``."""
        return "_".join(part for part in self.parts if part != "base")

    @property
    def graph_options(self):
        """The NPU graphs' options (npu_options.py), or None for the standard graphs."""
        if "npu" not in self.parts and not set(self.parts) & set(GRAPH_PRESETS):
            return None
        options = set(RECOMMENDED) - ({"eot"} if "argmax" in self.parts else set())
        padding = [part for part in self.parts if part in PADDINGS]
        if padding:
            options = options - set(PADDINGS) | set(padding)
        if "qkv" in self.parts:
            options.add("qkv")
        return check_options(options, f"--variants {self.name}")

    def graph(self, tower):
        """The ONNX graph this variant compiles for ``tower``."""
        options = self.graph_options
        return tower if options is None else graph_name(tower, options)

    def atc_args(self, tower, out_dir, aipp_config=None, graph_path=None):
        """Extra atc flags for ``tower``; writes the files they name into ``out_dir``. ``aipp_config``: the
        AIPP config the ``aipp`` preset compiles with; ``graph_path``: the graph ``hp`` reads its op types from."""
        args = []
        if "aipp" in self.parts and tower == "vision":
            if not aipp_config or not Path(aipp_config).is_file():
                raise KitError(f"variant {self.name}: the aipp preset needs the AIPP config openclip_preprocess.py "
                               "--uint8 writes (PREP/aipp.cfg)" + (f"; {aipp_config} not found" if aipp_config else ""))
            args.append(f"--insert_op_conf={aipp_config}")
        implmode = implmode_ops(graph_path) if "hp" in self.parts else []
        if implmode:
            args += ["--op_select_implmode=high_performance", f"--optypelist_for_implmode={','.join(implmode)}"]
        if "smallch" in self.parts and tower == "vision":
            args.append("--enable_small_channel=1")
        if "nofuseattn" in self.parts:
            path = Path(out_dir) / "fusion_switch_nofuseattn.cfg"
            write_text(path, json.dumps({"Switch": {"GraphFusion": {name: "off" for name in ATTENTION_FUSION_PASSES},
                                                    "UBFusion": {}}}, indent=4) + "\n")
            args.append(f"--fusion_switch_file={path}")
        return args


def implmode_ops(graph_path):
    """The ops ``hp`` compiles in high-performance mode for the graph at ``graph_path``: those of
    ``IMPLMODE_OPS`` its op types become, in that order."""
    from .atc import graph_facts

    present = {op_type for _, op_type in graph_facts(graph_path)[1]}
    return [op for op_type, op in IMPLMODE_OPS.items() if op_type in present]


def preset_notes(onnx_prefix, variant, towers):
    """Lines saying where a preset of ``variant`` changes nothing for a tower's graph."""
    from ..model.export import onnx_path

    if "hp" not in variant.parts:
        return []
    return [f"variant {variant.name}: hp changes nothing for {variant.graph(tower)} (it has no "
            f"{' or '.join(IMPLMODE_OPS.values())}); compiled without --op_select_implmode"
            for tower in towers if not implmode_ops(onnx_path(onnx_prefix, variant.graph(tower)))]


def parse_variants(text):
    """``base,npu,npu+hp`` (or ``auto``) → [Variant]; an unknown preset, options that exclude each other or a
    repeated variant is a one-line error."""
    variants = []
    text = AUTO_VARIANTS if text.strip() == AUTO else text
    for name in (part.strip() for part in text.split(",") if part.strip()):
        parts = tuple(part.strip() for part in name.split("+"))
        unknown = [part for part in parts if part not in PRESETS]
        if unknown:
            raise KitError(f"--variants {name}: unknown preset {unknown[0]!r}; presets: "
                           + "; ".join(f"{key} ({text})" for key, text in PRESETS.items()) + f"; or {AUTO}")
        if "padrows" in parts and "nopad" in parts:
            raise KitError(f"--variants {name}: padrows and nopad exclude each other; choose one padding")
        if set(parts) & set(GRAPH_PRESETS):  # npu is implied: npu+qkv and qkv are one variant
            parts = tuple(part for part in parts if part != "npu")
        variant = Variant(name, tuple(sorted(set(parts), key=list(PRESETS).index)))
        if any(v.tag == variant.tag for v in variants):
            raise KitError(f"--variants: {name} repeats a variant already listed")
        variants.append(variant)
    if not variants:
        raise KitError(f"--variants: give one or more, e.g. base,npu,npu+hp, or {AUTO}")
    return variants


def variant_jobs(onnx_prefix, variant, towers, batch_sizes, soc_version, output_dir=None, precision_mode=None,
                 dynamic_batch=False, aipp_config=None):
    """atc jobs for ``variant``: each tower's graph, its flags and the variant's tag (atc.plan_jobs per tower,
    since some presets apply to one tower only). Where a preset changes nothing for a graph, a note says so."""
    import shlex

    from ..model.export import onnx_path
    from .atc import plan_jobs

    out_dir = Path(output_dir) if output_dir else Path(onnx_prefix).parent
    jobs = []
    for tower in towers:
        graph = onnx_path(onnx_prefix, variant.graph(tower))
        if variant.graph_options is not None and not graph.is_file():
            raise KitError(f"{graph} not found; export it with openclip_torch2onnx.py --npu-graph "
                           f"{describe(tower_options(variant.graph_options, tower))}")
        args = " ".join(shlex.quote(arg) for arg in variant.atc_args(tower, out_dir, aipp_config, graph))
        jobs += plan_jobs(onnx_prefix, [variant.graph(tower)], batch_sizes, soc_version, output_dir, dynamic_batch,
                          precision_mode, atc_args=args, tag=variant.tag)
    for note in preset_notes(onnx_prefix, variant, towers):
        print(f"note: {note}", file=sys.stderr)
    return jobs
