#!/usr/bin/env python3
"""Where fp16 breaks a tower, and the nodes to keep in fp32 that repair it (``openclip-ascend precision``; ``--help`` for the flags)."""

from openclip_ascend.cli import run
from openclip_ascend.commands.precision import main

if __name__ == "__main__":
    run(main)
