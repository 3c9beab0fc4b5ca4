#!/usr/bin/env python3
"""Step 3: compile {prefix}_vision.onnx / {prefix}_text.onnx to OMs with atc, per batch size, for (``openclip-ascend convert``; ``--help`` for the flags)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openclip_ascend.cli import run  # noqa: E402
from openclip_ascend.commands.convert import main  # noqa: E402

if __name__ == "__main__":
    run(main)
