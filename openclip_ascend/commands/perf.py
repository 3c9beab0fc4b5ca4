"""Throughput sweep and report (steps 6 and 7) over a run folder whose models are exported:

    python openclip_perf.py --output-dir outputs/demo [--batch-sizes 1,4,8,16,32,64] [--perf-loops 50] [--int8]

    python openclip_perf.py --output-dir outputs/vit_b_32 --backend ascend --batch-sizes 1,8,64 --variants auto
    python openclip_perf.py --output-dir outputs/vit_b_32 --backend ascend --batch-sizes 1,8,64 \\
        --variants base,npu,npu+qkv+hp,npu+padrows+hp [--accuracy-subset 200] [--profile]

Takes every flag and environment variable of openclip_pipeline.py; writes throughput_{backend}.md/.csv,
throughput.png, performance.json and report.md; --variants also compiles each atc preset combination (auto:
the recommended set, NPU graph options included), judges each tower against PyTorch and writes
variants.md/.csv/.json with the fastest within bounds chosen per tower.
"""

import sys

from . import pipeline


def main(argv=None, prog=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(arg == "--steps" or arg.startswith("--steps=") for arg in argv):
        argv = ["--steps", "6,7"] + argv
    return pipeline.main(argv, prog, __doc__)
