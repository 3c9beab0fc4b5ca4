#!/usr/bin/env python3
"""Zero-shot classification with CLIP_benchmark's definitions through the kit's towers (``openclip-ascend zeroshot``; ``--help`` for the flags)."""

from openclip_ascend.cli import run
from openclip_ascend.commands.zeroshot import main

if __name__ == "__main__":
    run(main)
