"""Step 4: inference with ais_bench's flags and output layout, on ONNX Runtime (CPU) or PyTorch.

    python openclip_infer.py --model models/vit_b_32_vision.onnx --input prep/images \\
        --output results --output_dirname vision --outfmt NPY --batchsize 8
    python openclip_infer.py --model models/vit_b_32_text.onnx --loop 100 --batchsize 64   # pure inference
    python openclip_infer.py --backend torch --model-name ViT-B-32 --pretrained CKPT --tower vision --input …

    python openclip_infer.py --model models/vit_b_32_vision_bs8.om --input prep/images --output results \\
        --output_dirname vision --outfmt NPY --device 0,1     # Ascend: one process per NPU
    python openclip_infer.py --model models/vit_b_32_text_len32_bs8.om,models/vit_b_32_text_bs8.om \\
        --input prep/texts --output results --output_dirname text   # length buckets: each batch on the shortest
    python openclip_infer.py --model models/vit_b_32_vision_bs8.om --input one_batch --output run --dump 1
                                                                # operator dump in run/dump, as ais_bench --dump 1

Writes OUTPUT/DIRNAME/{stem}_0.npy per input file and OUTPUT/DIRNAME_summary.json (several devices:
OUTPUT/DIRNAME/device{N}/ and OUTPUT/DIRNAME/device{N}_summary.json), and prints ais_bench's summary
lines, including ``[INFO] throughput 1000*batchsize.mean(B)/NPU_compute_time.mean(T): F``. Timing an
OM checks first that the NPU is idle (``npu-smi info``); --require-idle makes a busy one an error.
"""

import argparse
import sys
from pathlib import Path

from ..cli import str2bool
from ..run.sessions import BACKENDS
from . import described


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=described(__doc__, prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", help=".onnx model (ONNX Runtime); .om needs the Ascend backend; several text "
                                              "models of different token lengths, comma-separated: length buckets")
    parser.add_argument("--input", "-i", help="input folders or .npy/.bin files, comma-separated (omit: pure inference)")
    parser.add_argument("--output", "-o", help="output root folder (omit: outputs are not saved, as in ais_bench)")
    parser.add_argument("--output_dirname", help="sub-folder of --output for this run (default: a timestamp)")
    parser.add_argument("--outfmt", choices=["NPY", "BIN", "TXT"], type=str.upper, help="output format (default BIN)")
    parser.add_argument("--batchsize", type=int, help="ais_bench's flag and spelling: the batch of a dynamic-batch "
                                                      "ONNX model (default: the model's static batch, else 1)")
    parser.add_argument("--loop", "-l", type=int, help="runs per batch, each timed (default 1)")
    parser.add_argument("--warmup_count", type=int, help="untimed runs first (default 1)")
    parser.add_argument("--device", "-d",
                        help="NPU id(s), default 0: 0,1,… runs one process per device (OM only); cuda: ONNX on the GPU "
                             "(needs onnxruntime-gpu)")
    parser.add_argument("--dymBatch", type=int, default=None, help="batch gear of a dynamic-batch OM")
    parser.add_argument("--dump", type=str2bool, default=False,
                        help="OM only: dump every op's inputs and outputs as ais_bench --dump 1 does (needs --output; "
                             "OUTPUT/acl.json, the dump in OUTPUT/dump; read it with openclip_precision.py locate "
                             "--npu-dump)")
    parser.add_argument("--acl_json_path", help="OM only: an acl.json of your own (dump or profiling)")
    parser.add_argument("--via-ais-bench", action="store_true",
                        help="run `python3 -m ais_bench` itself with the flags given here and parse its output")
    parser.add_argument("--require-idle", action="store_true",
                        help="stop instead of warning when npu-smi shows the NPU busy before an OM is timed")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--model-name", help="open_clip model name (torch backend)")
    parser.add_argument("--pretrained", help="checkpoint file or tag (torch backend; default: the bundled "
                        "weights for the tiny model, laion2b_s34b_b79k otherwise; none: random weights)")
    parser.add_argument("--tower", choices=["vision", "text"], help="tower to run (torch backend)")
    args = parser.parse_args(argv)

    from ..ascend.npu_smi import idle_check
    from ..cli import csv_ints
    from ..files import KitError
    from ..run.runner import infer, infer_devices
    from ..run.sessions import om_batch, open_session

    given = {"input": args.input, "output": args.output, "output_dirname": args.output_dirname,
             "outfmt": args.outfmt, "batchsize": args.batchsize, "loop": args.loop, "device": args.device,
             "dymBatch": args.dymBatch, "warmup_count": args.warmup_count, "dump": 1 if args.dump else None,
             "acl_json_path": args.acl_json_path}
    outfmt, loop, warmup_count = args.outfmt or "BIN", args.loop or 1, 1 if args.warmup_count is None else args.warmup_count
    if (args.batchsize is not None and args.batchsize < 1) or loop < 1 or warmup_count < 0:
        raise KitError("--batchsize and --loop must be ≥ 1 and --warmup_count ≥ 0")
    if args.dump and not args.output:
        raise KitError("--dump needs --output: the dump goes to OUTPUT/dump (ais_bench: 'when dump or profiler, miss "
                       "output path')")
    if args.device == "cuda":  # ONNX on the GPU through onnxruntime-gpu
        session = open_session(args.backend, args.model, device="cuda")
        infer(session, args.input, args.output, args.output_dirname, outfmt, args.batchsize, loop, warmup_count)
        return 0
    devices = csv_ints(args.device or "0", minimum=0)
    is_om = args.backend == "ascend" or (args.backend == "auto" and str(args.model or "").endswith(".om"))
    if is_om and (args.input is None or loop > 1):  # a throughput figure: only meaningful on an idle NPU
        _, warnings = idle_check(devices, args.require_idle)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if args.via_ais_bench:
        from ..ascend import aisbench

        if "," in str(args.model or ""):
            raise KitError("--via-ais-bench: ais_bench takes one model; length buckets (several text models) run in "
                           "this kit's runner, and a plain `python3 -m ais_bench` run needs the full-length text OM")
        if given["batchsize"] is None and is_om:  # old ais_infer defaulted to 1: pass the model's real batch
            given["batchsize"] = om_batch(args.model, args.dymBatch)
        cmd = aisbench.command(args.model, **given)
        print("$ " + " ".join(cmd))
        aisbench.run(cmd, args.output, args.output_dirname, devices)
        return 0
    if devices != [0] and not is_om:
        raise KitError(f"--device {args.device}: only OM models run on NPU devices; the CPU backends use device 0")
    acl_json_path = args.acl_json_path
    if args.dump and not acl_json_path:  # what ais_bench's get_acl_json_path writes
        from ..ascend.dump import write_acl_json

        model = str(args.model or "").split(",")[-1]
        acl_json_path = write_acl_json(Path(args.output) / "acl.json", Path(args.output) / "dump",
                                       Path(model).name.split(".")[0])
    if len(devices) > 1:
        if acl_json_path:
            raise KitError("--dump / --acl_json_path with several devices: dump on one device at a time")
        session_args = {"backend": args.backend, "model": args.model, "dym_batch": args.dymBatch}
        infer_devices(session_args, devices, args.input, args.output, args.output_dirname, outfmt,
                      args.batchsize, loop, warmup_count)
        return 0
    session = open_session(args.backend, args.model, args.model_name, args.pretrained, args.tower, devices[0],
                           args.dymBatch, acl_json_path)
    try:
        infer(session, args.input, args.output, args.output_dirname, outfmt, args.batchsize, loop, warmup_count)
    finally:
        session.close()
    return 0
