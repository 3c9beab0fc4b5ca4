"""Throughput sweep and report (steps 6 and 7) over a run folder whose models are exported:

    python openclip_perf.py --output-dir outputs/demo [--batch-sizes 1,4,8,16,32,64] [--perf-loops 50] [--int8]

Takes every flag and environment variable of openclip_pipeline.py; writes throughput_{backend}.md/.csv,
throughput.png, performance.json and report.md.
"""

import sys

from . import pipeline


def main(argv=None, prog=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(arg == "--steps" or arg.startswith("--steps=") for arg in argv):
        argv = ["--steps", "6,7"] + argv
    return pipeline.main(argv, prog)
