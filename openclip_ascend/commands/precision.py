"""Where fp16 breaks a tower, and the smallest fix: per-node error against fp32, and a recall-guided
search for the nodes to keep in fp32 (atc --keep_dtype).

    python openclip_precision.py locate --model-name ViT-B-32 --pretrained CKPT --prep prep --tower text \\
        --output-dir precision [--samples 16]
    python openclip_precision.py search --model-name ViT-B-32 --pretrained CKPT --prep prep --tower text \\
        --output-dir precision [--recall-bound 0.002] [--min-cosine 0.99] [--soc-version Ascend310P3]

Both export the model's towers to OUTPUT_DIR/models and run them on the CPU: fp32 (the golden run)
against the kit's fp16 simulation (weights and every intermediate stored in fp16). PREP is step 1's
folder (its manifest.json). locate writes node_errors_{tower}.csv (every node), .md (the first node
whose error jumps, the worst module scopes) and .png (error against depth). search also evaluates
keep sets on the whole PREP set — the other tower in fp32 — and writes keep_dtype_{tower}.cfg (one
node name per line, for PRECISION=keep:FILE or atc --keep_dtype) and precision_{tower}.json.
"""

import argparse

from ..models import DEFAULT_PRETRAINED


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["locate", "search"])
    parser.add_argument("--model-name", default="ViT-B-32")
    parser.add_argument("--pretrained", help=f"checkpoint file or cached tag (default: {DEFAULT_PRETRAINED}; the "
                                             "bundled weights for the tiny model)")
    parser.add_argument("--prep", required=True, help="step 1's output folder (manifest.json, images/, texts/)")
    parser.add_argument("--tower", required=True, choices=["vision", "text"])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--samples", type=int, default=16, help="inputs the per-node comparison reads (default 16)")
    parser.add_argument("--recall-bound", type=float, default=0.002,
                        help="largest recall@5 loss against fp32 a keep set may leave (default 0.002)")
    parser.add_argument("--min-cosine", type=float, default=0.99,
                        help="smallest cosine to fp32 of any embedding a keep set may leave (default 0.99)")
    parser.add_argument("--soc-version", default="",
                        help="the chip: on Ascend310P* only vector ops are kept (no fp32 matrix products there)")
    args = parser.parse_args(argv)

    from ..files import KitError
    from ..precision import export_for_precision, prepare, run_locate, run_search

    if args.samples < 1 or not 0 <= args.recall_bound < 1 or not -1 <= args.min_cosine <= 1:
        raise KitError("--samples must be ≥ 1, --recall-bound in [0, 1) and --min-cosine in [-1, 1]")
    prefix = export_for_precision(args.model_name, args.pretrained, args.output_dir)
    job = prepare(prefix, args.prep, args.tower, args.output_dir)
    if args.action == "locate":
        run_locate(job, args.samples)
    else:
        run_search(job, args.samples, args.recall_bound, args.min_cosine, args.soc_version)
    return 0
