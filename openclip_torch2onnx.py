#!/usr/bin/env python3
"""Step 2: export the vision and text towers to {prefix}_vision.onnx and {prefix}_text.onnx, then (``openclip-ascend export``; ``--help`` for the flags)."""

from openclip_ascend.cli import run
from openclip_ascend.commands.export import main

if __name__ == "__main__":
    run(main)
