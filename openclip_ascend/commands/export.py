"""Step 2: export the vision and text towers to {prefix}_vision.onnx and {prefix}_text.onnx, then
check ONNX Runtime against PyTorch (max abs diff must stay ≤ 1e-4).

    python openclip_torch2onnx.py --model-name ViT-B-32 --pretrained open_clip_pytorch_model.bin \\
        --onnx-prefix models/vit_b_32 [--opset-version 14] [--image CLIP.png --text "a dog"]

The reference's flags and defaults: --pretrained laion2b_s34b_b79k (a local file, or a tag resolved as
open_clip resolves it: the Hugging Face cache, else a download through HF_ENDPOINT; `none` for random
weights, with a warning; the bundled tiny model defaults to its own weights), --image / --text are
traced with and checked too. The default opset is 14: the reference's 11 cannot export torch 2.x attention.
--text-lengths dyn,32 adds shorter text graphs (exact: a caption's embedding depends only on its
tokens up to the EOT), each checked against the full-length graph (max abs diff ≤ 1e-5).
--npu-graph adds PREFIX_{vision,text}_npu.onnx, shaped for the NPU with the recommended options (linear
layers as 2-D products, tokens padded per sample to a multiple of 16, text EOT pooled without ArgMax on int32
tokens); --npu-graph OPTION,… picks them: one padding (pad16, padrows, nopad), qkv, eot, and writes
PREFIX_{tower}_npu_{options}.onnx (the options also in the graph's metadata, npu_graph). Same embeddings,
checked against PyTorch like the others; compile them with convert/onnx2om.py --towers vision_npu,text_npu or
the sweep's variants (npu, padrows, nopad, qkv, argmax).
"""

import argparse

from ..agreement import cosine_text
from ..cli import print_result
from ..model.export import DEFAULT_OPSET
from ..model.loading import DEFAULT_PRETRAINED, TINY_MODEL
from ..model.npu_options import OPTIONS, RECOMMENDED, describe, parse_graph_options
from ..model.text_lengths import parse_text_lengths
from . import described


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=described(__doc__, prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", default="ViT-B-32")
    parser.add_argument("--pretrained",
                        help=f"local checkpoint file, or a tag (downloaded as open_clip does, through HF_ENDPOINT "
                             f"where set); none: random weights (default: {DEFAULT_PRETRAINED}, the reference's; "
                             f"{TINY_MODEL}'s bundled weights for it)")
    parser.add_argument("--onnx-prefix", default="models/vit_b_32",
                        help="writes PREFIX_vision.onnx and PREFIX_text.onnx (default: %(default)s)")
    parser.add_argument("--opset", "--opset-version", dest="opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--image", help="an image to trace the vision tower with (and check parity on)")
    parser.add_argument("--text", help="a caption to trace the text tower with (and check parity on)")
    parser.add_argument("--towers", default="vision,text", help="comma-separated subset of vision,text")
    parser.add_argument("--text-lengths", default="",
                        help="shorter text graphs for exact length trimming, comma-separated: dyn (a dynamic length "
                             "axis, PREFIX_text_dynlen.onnx: the CPU runner cuts each batch to its longest caption) "
                             "and/or token counts such as 32 (PREFIX_text_len32.onnx, static: NPU length buckets)")
    parser.add_argument("--npu-graph", nargs="?", const="", metavar="OPTION,…",
                        help="also the NPU-shaped graphs: alone, the recommended options (PREFIX_{tower}_npu.onnx: "
                             f"{describe(RECOMMENDED)}); or options named: "
                             + "; ".join(f"{name}: {text}" for name, text in OPTIONS.items()))
    parser.add_argument("--skip-check", action="store_true", help="do not compare ONNX Runtime with PyTorch")
    args = parser.parse_args(argv)
    graph_options = None if args.npu_graph is None else parse_graph_options(args.npu_graph)

    from ..data.preprocess import given_examples
    from ..model.export import export_model, export_npu_graphs, export_text_lengths
    from ..model.loading import default_pretrained, is_random_weights, load_model

    args.pretrained = default_pretrained(args.model_name, args.pretrained)

    model = load_model(args.model_name, args.pretrained)
    examples = given_examples(model, args.model_name, args.pretrained, args.image, args.text)
    towers = [tower.strip() for tower in args.towers.split(",") if tower.strip()]
    report = export_model(model, args.onnx_prefix, towers, args.opset, check=not args.skip_check, examples=examples)
    if args.text_lengths:
        report.update(export_text_lengths(model, args.onnx_prefix, parse_text_lengths(args.text_lengths), args.opset,
                                          check=not args.skip_check))
    if graph_options is not None:
        report.update(export_npu_graphs(model, args.onnx_prefix, towers, args.opset, check=not args.skip_check,
                                        options=graph_options))
    for tower, entry in report.items():
        for case, parity in (entry["parity"] or {}).items():
            label = f"--{'image' if tower == 'vision' else 'text'}" if case == "given" else \
                case if isinstance(case, str) else f"batch {case}"
            print(f"{tower} {label}: max abs diff {parity['max_abs_diff']:.2e}, "
                  f"min cosine {cosine_text(parity['min_cosine'], 8)}")
    print_result({"model_name": args.model_name, "pretrained": args.pretrained,
                  "random_weights": is_random_weights(args.pretrained), "towers": report})
