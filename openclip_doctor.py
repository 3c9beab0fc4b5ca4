#!/usr/bin/env python3
"""Will a run work on this machine, and on which path? (``openclip-ascend doctor``; ``--help`` for the flags)."""

from openclip_ascend.cli import run
from openclip_ascend.commands.doctor import main

if __name__ == "__main__":
    run(main)
