"""Will a run work on this machine, and on which path? Checks the environment and runs a smoke test in
about a minute, before any long work:

    python openclip_doctor.py                                   # the reference model's weights, this machine
    python openclip_doctor.py --model-name ViT-B-32 --pretrained /data/open_clip_pytorch_model.bin \\
        --data-dir /data/flickr30k --output-dir outputs/doctor
    python openclip_doctor.py --require-npu                     # a missing Ascend path is a failure

Checks: Python and the kit's requirements against their supported ranges; CANN (set_env.sh sourced,
version), atc, ais_bench and aclruntime importable by this Python, npu-smi's chips, health, soc version
and idle state, msprof; free disk; whether --pretrained resolves (file, cache, or downloadable through
HF_ENDPOINT); the data folder when given. Smoke test (--no-smoke skips it): the bundled tiny model →
ONNX → ONNX Runtime against PyTorch; with the Ascend tools, → atc at batch 1 per tower for the chip →
InferSession → embeddings against ONNX Runtime fp32, with the seconds each stage took.

Writes OUTPUT/doctor.json and doctor.md (the same table) with the smoke test's atc logs in
OUTPUT/smoke/: one folder to attach to a bug report. Exit 0 when the chosen path works, 1 with one line
per failing check otherwise.
"""

import argparse
import os
import sys

from ..cli import EXIT_CHECK_FAILED
from . import described


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=described(__doc__, prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/doctor", help="where doctor.json, doctor.md and the smoke "
                                                                       "test's files go (default: %(default)s)")
    parser.add_argument("--model-name", default=os.environ.get("MODEL_NAME"),
                        help="the model a run will use [MODEL_NAME] (default: ViT-B-32, the reference's)")
    parser.add_argument("--pretrained", default=os.environ.get("PRETRAINED"),
                        help="its weights: a file or tag [PRETRAINED] (default: the model's default, "
                             "laion2b_s34b_b79k for ViT-B-32)")
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR"), help="the data folder to check [DATA_DIR]")
    parser.add_argument("--dataset", default=os.environ.get("DATASET") or "flickr30k", choices=["flickr30k", "mscoco"],
                        help="its layout [DATASET]")
    parser.add_argument("--task", default=os.environ.get("TASK") or "retrieval", choices=["retrieval", "zeroshot"],
                        help="zeroshot: --data-dir holds class folders [TASK]")
    parser.add_argument("--soc-version", default=os.environ.get("SOC_VERSION"),
                        help="atc soc version for the smoke test [SOC_VERSION] (default: npu-smi)")
    parser.add_argument("--no-smoke", action="store_true", help="skip the smoke test (the environment checks only)")
    parser.add_argument("--require-npu", action="store_true", help="a missing Ascend path is a failure, not a warning")
    args = parser.parse_args(argv)

    from ..doctor import FAIL, diagnose, terminal
    from ..model.loading import default_pretrained

    model_name = args.model_name or "ViT-B-32"
    report = diagnose(args.output_dir, model_name, default_pretrained(model_name, args.pretrained),
                      explicit_weights=bool(args.model_name or args.pretrained), data_dir=args.data_dir,
                      dataset=args.dataset, task=args.task, soc_version=args.soc_version, run_smoke=not args.no_smoke,
                      require_npu=args.require_npu)
    print(terminal(report))
    print(f"\nreport: {os.path.join(args.output_dir, 'doctor.json')} (and doctor.md)")
    failing = [check for check in report["checks"] if check["status"] == FAIL]
    for check in failing:
        print(f"doctor: FAIL {check['check']}: {check['found']}" + (f"; {check['advice']}" if check["advice"] else ""),
              file=sys.stderr)
    return EXIT_CHECK_FAILED if failing else 0
