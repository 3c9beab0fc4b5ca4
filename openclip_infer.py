#!/usr/bin/env python3
"""Step 4: inference with ais_bench's flags and output layout, on ONNX Runtime (CPU) or PyTorch.

    python openclip_infer.py --model models/vit_b_32_vision.onnx --input prep/images \\
        --output results --output_dirname vision --outfmt NPY --batchsize 8
    python openclip_infer.py --model models/vit_b_32_text.onnx --loop 100 --batchsize 64   # pure inference
    python openclip_infer.py --backend torch --model-name ViT-B-32 --pretrained CKPT --tower vision --input …

Writes OUTPUT/DIRNAME/{stem}_0.npy per input file and OUTPUT/DIRNAME_summary.json, and prints
ais_bench's summary lines, including
``[INFO] throughput 1000*batchsize.mean(B)/NPU_compute_time.mean(T): F``.
"""

import argparse

from openclip_ascend.backends import BACKENDS
from openclip_ascend.cli import run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", help=".onnx model (ONNX Runtime); .om needs the Ascend backend")
    parser.add_argument("--input", "-i", help="input folders or .npy files, comma-separated (omit: pure inference)")
    parser.add_argument("--output", "-o", help="output root folder (omit: outputs are not saved, as in ais_bench)")
    parser.add_argument("--output_dirname", help="sub-folder of --output for this run (default: a timestamp)")
    parser.add_argument("--outfmt", default="BIN", choices=["NPY", "BIN", "TXT"], type=str.upper)
    parser.add_argument("--batchsize", type=int, default=1, help="model batch for a dynamic-batch model")
    parser.add_argument("--loop", "-l", type=int, default=1, help="runs per batch (timed)")
    parser.add_argument("--warmup_count", type=int, default=1, help="untimed runs first")
    parser.add_argument("--device", "-d", default="0", help="device id (only 0 on CPU)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--model-name", help="open_clip model name (torch backend)")
    parser.add_argument("--pretrained", help="checkpoint file or cached tag (torch backend)")
    parser.add_argument("--tower", choices=["vision", "text"], help="tower to run (torch backend)")
    args = parser.parse_args()

    from openclip_ascend.backends import open_session
    from openclip_ascend.files import KitError
    from openclip_ascend.runner import infer

    if args.batchsize < 1 or args.loop < 1 or args.warmup_count < 0:
        raise KitError("--batchsize and --loop must be ≥ 1 and --warmup_count ≥ 0")
    if args.device != "0":
        raise KitError(f"--device {args.device}: the CPU backends run on device 0 only")
    session = open_session(args.backend, args.model, args.model_name, args.pretrained, args.tower)
    infer(session, args.input, args.output, args.output_dirname, args.outfmt, args.batchsize, args.loop,
          args.warmup_count, args=vars(args))


if __name__ == "__main__":
    run(main)
