#!/usr/bin/env python3
"""Step 5: recall@k (CLIP_benchmark's definition) from two ais_bench-layout embedding folders. (``openclip-ascend postprocess``; ``--help`` for the flags)."""

from openclip_ascend.cli import run
from openclip_ascend.commands.postprocess import main

if __name__ == "__main__":
    run(main)
