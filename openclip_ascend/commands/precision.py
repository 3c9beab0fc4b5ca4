"""Where fp16 breaks a tower, and the smallest fix: per-node error against fp32, and a recall-guided
search for the nodes to keep in fp32 (atc --keep_dtype).

    python openclip_precision.py locate --model-name ViT-B-32 --pretrained CKPT --prep prep --tower text \\
        --output-dir precision [--samples 16]
    python openclip_precision.py search --model-name ViT-B-32 --pretrained CKPT --prep prep --tower text \\
        --output-dir precision [--recall-bound 0.002] [--min-cosine 0.99] [--soc-version Ascend310P3]

Both export the model's towers to OUTPUT_DIR/models and run them on the CPU: fp32 (the golden run)
against the kit's fp16 simulation (weights and every intermediate stored in fp16). PREP is step 1's
folder (its manifest.json). locate writes node_errors_{tower}.csv (every node), .md (the first node
whose error jumps, the worst module scopes) and .png (error against depth). A node jumps when it
overflows, or when its error grows tenfold over its inputs', is large (relative 0.05 or cosine below
0.999) and its readers carry it; a large error they do not carry (a mean of values near zero) is listed
as contained. search also evaluates keep sets on the whole PREP set — the other tower in fp32 — and
writes keep_dtype_{tower}.cfg (one node name per line, for PRECISION=keep:FILE or atc --keep_dtype)
and precision_{tower}.json. Both run the graph in slices: memory follows one slice's weights and one
batch of its outputs, not the model's size.

On an NPU, locate compares the OM's own operator dump with fp32 instead of the simulation:

    python openclip_precision.py locate ... --om models/vit_b_32_text_bs8.om [--device 0]
    python openclip_precision.py locate ... --npu-dump run/dump --dump-inputs batch0.npy[,batch1.npy]

--om runs the OM on the first --samples inputs (whole batches) with ais_bench --dump 1's acl.json;
--npu-dump reads a dump already made (ais_bench --dump 1 writes it to {output}/dump), its executions'
inputs given in order. Dumped ops are matched to ONNX nodes by name, so give --onnx with the graph
the OM was compiled from when it is not the one this command exports.
"""

import argparse

from ..evaluate.verdict import MIN_COSINE, RECALL_BOUND
from ..model.loading import DEFAULT_PRETRAINED
from . import described


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=described(__doc__, prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["locate", "search"])
    parser.add_argument("--model-name", default="ViT-B-32")
    parser.add_argument("--pretrained", help=f"checkpoint file or tag (default: {DEFAULT_PRETRAINED}; the "
                                             "bundled weights for the tiny model)")
    parser.add_argument("--prep", required=True, help="step 1's output folder (manifest.json, images/, texts/)")
    parser.add_argument("--tower", required=True, choices=["vision", "text"])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--samples", type=int, default=16, help="inputs the per-node comparison reads (default 16)")
    parser.add_argument("--recall-bound", type=float, default=RECALL_BOUND,
                        help=f"largest recall@5 loss against fp32 a keep set may leave (default {RECALL_BOUND:g})")
    parser.add_argument("--min-cosine", type=float, default=MIN_COSINE,
                        help=f"smallest cosine to fp32 of any embedding a keep set may leave (default {MIN_COSINE:g})")
    parser.add_argument("--soc-version", default="",
                        help="the chip: on Ascend310P* only vector ops are kept (no fp32 matrix products there)")
    parser.add_argument("--onnx", help="the tower's fp32 graph (default: exported into OUTPUT_DIR/models)")
    parser.add_argument("--om", help="locate on the NPU: run this OM with the operator dump on and compare its dump")
    parser.add_argument("--device", type=int, default=0, help="NPU id for --om (default 0)")
    parser.add_argument("--npu-dump", help="locate from a dump already made: ais_bench --dump 1's {output}/dump")
    parser.add_argument("--dump-inputs", help="with --npu-dump: the .npy input of each dumped execution, in order, "
                                              "comma-separated (a warm-up run is an execution too: list its batch "
                                              "first, or dump with --warmup_count 0)")
    args = parser.parse_args(argv)

    from pathlib import Path

    import numpy as np

    from ..evaluate.precision import (
        export_for_precision,
        prepare,
        run_locate,
        run_locate_dump,
        run_locate_on_npu,
        run_search,
    )
    from ..files import KitError
    from ..model.loading import onnx_prefix

    if args.samples < 1 or not 0 <= args.recall_bound < 1 or not -1 <= args.min_cosine <= 1:
        raise KitError("--samples must be ≥ 1, --recall-bound in [0, 1) and --min-cosine in [-1, 1]")
    if (args.om or args.npu_dump) and args.action != "locate":
        raise KitError("--om and --npu-dump are for locate; search runs the fp16 simulation")
    if args.om and args.npu_dump:
        raise KitError("give --om (run and dump now) or --npu-dump (a dump already made), not both")
    if bool(args.npu_dump) != bool(args.dump_inputs):
        raise KitError("--npu-dump needs --dump-inputs (the .npy each dumped execution ran on), and the other way round")
    if args.onnx and not Path(args.onnx).is_file():
        raise KitError(f"--onnx {args.onnx}: not found")
    if args.onnx and args.action == "locate":  # the graph is given: nothing to export
        job = prepare(onnx_prefix(args.output_dir, args.model_name), args.prep, args.tower, args.output_dir)
        job.source = Path(args.onnx)
    else:
        job = prepare(export_for_precision(args.model_name, args.pretrained, args.output_dir), args.prep, args.tower,
                      args.output_dir)
    if args.om:
        run_locate_on_npu(job, args.om, args.samples, args.device)
    elif args.npu_dump:
        batches = []
        for name in args.dump_inputs.split(","):
            try:
                batches.append(np.load(name))
            except (OSError, ValueError) as exc:
                raise KitError(f"--dump-inputs {name}: not a readable .npy ({exc})") from exc
        run_locate_dump(job, batches, args.npu_dump, f"NPU dump in {args.npu_dump}")
    elif args.action == "locate":
        run_locate(job, args.samples)
    else:
        run_search(job, args.samples, args.recall_bound, args.min_cosine, args.soc_version)
    return 0
