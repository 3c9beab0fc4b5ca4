#!/usr/bin/env python3
"""All steps in one command, on the bundled sample and tiny model by default:

    python openclip_pipeline.py --output-dir outputs/demo
    python openclip_pipeline.py --output-dir outputs/flickr --data-dir flickr30k \\
        --model-name ViT-B-32 --pretrained open_clip_pytorch_model.bin --batch-sizes 1,4,8,16

Writes the sample (if no --data-dir), prep/, models/, infer/{backend}_bs{N}/{vision,text}/,
recall.md/.csv, throughput_{backend}.md/.csv and results.json under --output-dir.
"""

import argparse

from openclip_ascend.cli import csv_ints, run
from openclip_ascend.export import DEFAULT_OPSET
from openclip_ascend.models import TINY_MODEL, TINY_WEIGHTS


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--data-dir", help="flickr30k folder (default: generate the bundled sample set)")
    parser.add_argument("--model-name", default=TINY_MODEL)
    parser.add_argument("--pretrained", help=f"checkpoint file or cached tag (default for {TINY_MODEL}: bundled)")
    parser.add_argument("--batch-sizes", default="1,4,8", help="comma-separated batch sizes to sweep")
    parser.add_argument("--workers", type=int, help="preprocessing processes (default: all cores)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    args = parser.parse_args()

    from openclip_ascend.pipeline import run_pipeline

    pretrained = args.pretrained or (str(TINY_WEIGHTS) if args.model_name == TINY_MODEL else None)
    run_pipeline(args.output_dir, args.model_name, pretrained, args.data_dir, csv_ints(args.batch_sizes),
                 args.workers, args.opset)


if __name__ == "__main__":
    run(main)
