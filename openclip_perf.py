#!/usr/bin/env python3
"""Throughput sweep and report (steps 6 and 7) over a run folder whose models are exported:

    python openclip_perf.py --output-dir outputs/demo [--batch-sizes 1,4,8,16,32,64] [--perf-loops 50] [--int8]

Takes every flag and environment variable of openclip_pipeline.py; writes throughput_{backend}.md/.csv,
throughput.png, performance.json and report.md.
"""

import sys

import openclip_pipeline

if __name__ == "__main__":
    if not any(arg == "--steps" or arg.startswith("--steps=") for arg in sys.argv[1:]):
        sys.argv[1:1] = ["--steps", "6,7"]
    openclip_pipeline.run(openclip_pipeline.main)
