#!/usr/bin/env python3
"""Throughput sweep and report, steps 6 and 7 (``openclip-ascend perf``; ``--help`` for the flags)."""

from openclip_ascend.cli import run
from openclip_ascend.commands.perf import main

if __name__ == "__main__":
    run(main)
