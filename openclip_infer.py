#!/usr/bin/env python3
"""Step 4: inference with ais_bench's flags and output layout, on ONNX Runtime (CPU) or PyTorch.

    python openclip_infer.py --model models/vit_b_32_vision.onnx --input prep/images \\
        --output results --output_dirname vision --outfmt NPY --batchsize 8
    python openclip_infer.py --model models/vit_b_32_text.onnx --loop 100 --batchsize 64   # pure inference
    python openclip_infer.py --backend torch --model-name ViT-B-32 --pretrained CKPT --tower vision --input …

    python openclip_infer.py --model models/vit_b_32_vision_bs8.om --input prep/images --output results \
        --output_dirname vision --outfmt NPY --device 0,1     # Ascend: one process per NPU

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
    parser.add_argument("--device", "-d", default="0",
                        help="NPU id(s): 0,1,… runs one process per device (OM only); cuda: ONNX on the GPU "
                             "(needs onnxruntime-gpu)")
    parser.add_argument("--dymBatch", type=int, default=None, help="batch gear of a dynamic-batch OM")
    parser.add_argument("--via-ais-bench", action="store_true",
                        help="run `python3 -m ais_bench` itself with these flags and parse its output")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--model-name", help="open_clip model name (torch backend)")
    parser.add_argument("--pretrained", help="checkpoint file or cached tag (torch backend)")
    parser.add_argument("--tower", choices=["vision", "text"], help="tower to run (torch backend)")
    args = parser.parse_args()

    from openclip_ascend.backends import open_session
    from openclip_ascend.cli import csv_ints
    from openclip_ascend.files import KitError
    from openclip_ascend.runner import infer, infer_devices

    if args.batchsize < 1 or args.loop < 1 or args.warmup_count < 0:
        raise KitError("--batchsize and --loop must be ≥ 1 and --warmup_count ≥ 0")
    if args.device == "cuda":  # ONNX on the GPU through onnxruntime-gpu
        session = open_session(args.backend, args.model, device="cuda")
        infer(session, args.input, args.output, args.output_dirname, args.outfmt, args.batchsize, args.loop,
              args.warmup_count, args=vars(args))
        return 0
    devices = csv_ints(args.device, minimum=0)
    if args.via_ais_bench:
        from openclip_ascend import aisbench

        cmd = aisbench.command(args.model, args.input, args.output, args.output_dirname, args.outfmt,
                               args.batchsize, args.loop, args.device, args.dymBatch, args.warmup_count)
        print("$ " + " ".join(cmd))
        return 0 if aisbench.run(cmd, args.output, args.output_dirname) else 1
    is_om = args.backend == "ascend" or (args.backend == "auto" and str(args.model or "").endswith(".om"))
    if devices != [0] and not is_om:
        raise KitError(f"--device {args.device}: only OM models run on NPU devices; the CPU backends use device 0")
    if len(devices) > 1:
        session_args = {"backend": args.backend, "model": args.model, "dym_batch": args.dymBatch}
        infer_devices(session_args, devices, args.input, args.output, args.output_dirname, args.outfmt,
                      args.batchsize, args.loop, args.warmup_count, args=vars(args))
        return 0
    session = open_session(args.backend, args.model, args.model_name, args.pretrained, args.tower, devices[0],
                           args.dymBatch)
    infer(session, args.input, args.output, args.output_dirname, args.outfmt, args.batchsize, args.loop,
          args.warmup_count, args=vars(args))
    return 0

if __name__ == "__main__":
    run(main)
