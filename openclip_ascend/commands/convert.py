"""Step 3: compile {prefix}_vision.onnx / {prefix}_text.onnx to OMs with atc, per batch size, for
the chip `npu-smi info` reports (or --soc-version).

    python convert/onnx2om.py --onnx-prefix models/vit_b_32 [--towers vision,text]
        [--batch-sizes 1,4,8,16,32,64] [--soc-version Ascend910B4] [--precision-mode MODE]
        [--dynamic-batch] [--output-dir models] [--jobs N] [--force] [--dry-run]
        [--atc-args='--op_select_implmode=high_performance'] [--tag hp] [--text-lengths 32]
    python convert/onnx2om.py --onnx-prefix models/vit_b_32 --variant npu+hp   # a named preset (atc_presets)

Writes {output}/{prefix}_{tower}_bs{N}[_{tag}].om (atc may add _linux_<arch>), each with its atc log
(.atc.log) beside it; an OM newer than its ONNX and built by the same command is skipped unless
--force. Ends with a table and a non-zero exit if any compile failed.
"""

import argparse
import shlex
import sys

from ..cli import csv_ints, print_result
from ..markdown import markdown_table
from . import described


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=described(__doc__, prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx-prefix", required=True, help="reads PREFIX_vision.onnx and PREFIX_text.onnx")
    parser.add_argument("--towers", default="vision,text")
    parser.add_argument("--text-lengths", default="",
                        help="text length buckets to compile too, e.g. 32 (reads PREFIX_text_len32.onnx, exported "
                             "with openclip_torch2onnx.py --text-lengths 32)")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32,64")
    parser.add_argument("--soc-version", help="e.g. Ascend910B4 (default: detected with npu-smi info)")
    parser.add_argument("--precision-mode",
                        help="preset fp16 (atc default), fp32 (must_keep_origin_dtype), mixed (fp16 with LayerNorm, "
                             "Softmax and the head kept fp32 via --keep_dtype), or any atc --precision_mode value; "
                             "per tower as vision=mixed,text=fp16")
    parser.add_argument("--precision-mode-v2", help="atc --precision_mode_v2 (e.g. origin, mixed_float16)")
    parser.add_argument("--dynamic-batch", action="store_true", help="one OM per tower with every batch size as a gear")
    parser.add_argument("--output-dir", help="folder for the OMs (default: beside the ONNX files)")
    parser.add_argument("--atc-args", default="", help="extra atc flags as one string: --atc-args='--flag=value --flag2=value'")
    parser.add_argument("--tag", default="", help="name of this flag variant, appended to the OM names")
    parser.add_argument("--variant", help="a named preset combination instead of --atc-args/--tag: base, npu (the "
                                          "--npu-graph ONNX), padrows, nopad, qkv, argmax (NPU graph options), hp, "
                                          "smallch, nofuseattn, aipp, joined by + (e.g. npu+qkv+hp)")
    parser.add_argument("--aipp-config", help="for --variant …aipp: the AIPP config openclip_preprocess.py --uint8 "
                                              "wrote (PREP/aipp.cfg)")
    parser.add_argument("--jobs", type=int, default=1, help="atc processes at once")
    parser.add_argument("--force", action="store_true", help="rebuild OMs that are up to date")
    parser.add_argument("--dry-run", action="store_true", help="print the atc commands, run nothing")
    args = parser.parse_args(argv)

    from ..ascend.atc import SUMMARY_HEADERS, plan_jobs, run_jobs, summary_rows
    from ..ascend.npu_smi import detect_soc_version
    from ..files import KitError
    from ..model.text_lengths import text_graph

    soc, _, warnings = detect_soc_version(args.soc_version)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    towers = [tower.strip() for tower in args.towers.split(",") if tower.strip()]
    towers += [text_graph(length) for length in csv_ints(args.text_lengths, minimum=3)] if args.text_lengths else []
    if args.variant:
        from ..ascend.atc_presets import parse_variants, variant_jobs

        variants = parse_variants(args.variant)
        if len(variants) > 1 or args.atc_args or args.tag or args.text_lengths or args.precision_mode_v2:
            raise KitError("--variant takes one preset combination (e.g. npu+hp) and sets the graphs, flags and tag "
                           "itself: drop --atc-args, --tag, --text-lengths and --precision-mode-v2")
        jobs = variant_jobs(args.onnx_prefix, variants[0], towers, csv_ints(args.batch_sizes), soc, args.output_dir,
                            args.precision_mode, args.dynamic_batch, args.aipp_config)
    else:
        jobs = plan_jobs(args.onnx_prefix, towers, csv_ints(args.batch_sizes), soc, args.output_dir,
                         args.dynamic_batch, args.precision_mode, args.precision_mode_v2, args.atc_args, args.tag)
    if args.dry_run:
        for job in jobs:
            print(shlex.join(job.command))
        return 0
    jobs = run_jobs(jobs, args.jobs, args.force)
    print(markdown_table(SUMMARY_HEADERS, summary_rows(jobs)))
    print_result({"soc_version": soc, "oms": [{"tower": j.tower, "batch": j.batch, "status": j.status,
                                               "om": str(j.om) if j.om else None, "error": j.error} for j in jobs]})
    failed = [job for job in jobs if job.status == "failed"]
    if failed:
        print(f"error: {len(failed)} of {len(jobs)} atc compiles failed; see the .atc.log beside each "
              f"(first: {failed[0].log})", file=sys.stderr)
        return 1
    return 0
