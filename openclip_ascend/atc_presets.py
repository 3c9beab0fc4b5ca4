"""Named atc flag sets for the variant sweep, combinable with ``+`` (``npu+hp+smallch``).

- ``base``: the reference command, nothing added.
- ``npu``: the NPU-shaped graph (``{tower}_npu.onnx``: tokens padded to 16, 2-D products; npu_graph.py).
- ``hp``: ``--op_select_implmode=high_performance --optypelist_for_implmode=Gelu`` (Gelu's fast
  implementation only), as the 310P CLIP recipes compile.
- ``smallch``: ``--enable_small_channel=1`` (vision: the 3-channel first convolution), as ModelZoo's
  ViT_base recipe compiles.
- ``nofuseattn``: a ``--fusion_switch_file`` turning off ``ZAttentionLnQKVONNXFusionPass`` and
  ``ZAttentionScoreFusionPass``, as ModelZoo's Chinese_CLIP text recipe does; the file is CANN's
  ``{"Switch": {"GraphFusion": {pass: "off"}, "UBFusion": {}}}``.
- ``aipp``: ``--insert_op_conf`` with the static AIPP config ``openclip_preprocess.py --uint8`` writes
  (vision: the OM takes uint8 [B, H, W, 3] and normalises on the chip; aipp.py).

Each variant compiles under its own tag (``…_vision_bs64_npu_hp.om``), so variants never share a name.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from .files import KitError, write_text

HIGH_PERFORMANCE = ("--op_select_implmode=high_performance", "--optypelist_for_implmode=Gelu")
ATTENTION_FUSION_PASSES = ("ZAttentionLnQKVONNXFusionPass", "ZAttentionScoreFusionPass")
PRESETS = {
    "base": "the reference atc command",
    "npu": "the NPU-shaped graph: tokens padded to 16, 2-D products",
    "hp": "Gelu in high-performance implmode",
    "smallch": "--enable_small_channel=1 (vision)",
    "nofuseattn": "attention fusion passes off (--fusion_switch_file)",
    "aipp": "uint8 image input, normalised by AIPP (vision; --insert_op_conf)",
}


@dataclass(frozen=True)
class Variant:
    name: str  # as given: npu+hp
    parts: tuple

    @property
    def tag(self):
        """The OM name suffix: empty for base, else the parts joined by ``_``."""
        return "_".join(part for part in self.parts if part != "base")

    def graph(self, tower):
        """The ONNX graph this variant compiles for ``tower``."""
        return f"{tower}_npu" if "npu" in self.parts else tower

    def atc_args(self, tower, out_dir, aipp_config=None):
        """Extra atc flags for ``tower``; writes the files they name into ``out_dir``. ``aipp_config``: the
        AIPP config the ``aipp`` preset compiles with."""
        args = []
        if "aipp" in self.parts and tower == "vision":
            if not aipp_config or not Path(aipp_config).is_file():
                raise KitError(f"variant {self.name}: the aipp preset needs the AIPP config openclip_preprocess.py "
                               "--uint8 writes (PREP/aipp.cfg)" + (f"; {aipp_config} not found" if aipp_config else ""))
            args.append(f"--insert_op_conf={aipp_config}")
        if "hp" in self.parts:
            args += HIGH_PERFORMANCE
        if "smallch" in self.parts and tower == "vision":
            args.append("--enable_small_channel=1")
        if "nofuseattn" in self.parts:
            path = Path(out_dir) / "fusion_switch_nofuseattn.cfg"
            write_text(path, json.dumps({"Switch": {"GraphFusion": {name: "off" for name in ATTENTION_FUSION_PASSES},
                                                    "UBFusion": {}}}, indent=4) + "\n")
            args.append(f"--fusion_switch_file={path}")
        return args


def parse_variants(text):
    """``base,npu,npu+hp`` → [Variant]; an unknown preset or a repeated variant is a one-line error."""
    variants = []
    for name in (part.strip() for part in text.split(",") if part.strip()):
        parts = tuple(part.strip() for part in name.split("+"))
        unknown = [part for part in parts if part not in PRESETS]
        if unknown:
            raise KitError(f"--variants {name}: unknown preset {unknown[0]!r}; presets: "
                           + "; ".join(f"{key} ({text})" for key, text in PRESETS.items()))
        variant = Variant(name, tuple(sorted(set(parts), key=list(PRESETS).index)))
        if any(v.tag == variant.tag for v in variants):
            raise KitError(f"--variants: {name} repeats a variant already listed")
        variants.append(variant)
    if not variants:
        raise KitError("--variants: give one or more, e.g. base,npu,npu+hp")
    return variants


def variant_jobs(onnx_prefix, variant, towers, batch_sizes, soc_version, output_dir=None, precision_mode=None,
                 dynamic_batch=False, aipp_config=None):
    """atc jobs for ``variant``: each tower's graph, its flags and the variant's tag (atc.plan_jobs per tower,
    since some presets apply to one tower only)."""
    import shlex

    from .atc import plan_jobs

    out_dir = Path(output_dir) if output_dir else Path(onnx_prefix).parent
    jobs = []
    for tower in towers:
        args = " ".join(shlex.quote(arg) for arg in variant.atc_args(tower, out_dir, aipp_config))
        jobs += plan_jobs(onnx_prefix, [variant.graph(tower)], batch_sizes, soc_version, output_dir, dynamic_batch,
                          precision_mode, atc_args=args, tag=variant.tag)
    return jobs
