#!/usr/bin/env python3
"""The numbered steps, all or some, on the bundled sample and tiny model by default: (``openclip-ascend pipeline``; ``--help`` for the flags)."""

from openclip_ascend.cli import run
from openclip_ascend.commands.pipeline import main

if __name__ == "__main__":
    run(main)
