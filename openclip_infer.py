#!/usr/bin/env python3
"""Step 4: inference with ais_bench's flags and output layout, on ONNX Runtime (CPU) or PyTorch. (``openclip-ascend infer``; ``--help`` for the flags)."""

from openclip_ascend.cli import run
from openclip_ascend.commands.infer import main

if __name__ == "__main__":
    run(main)
