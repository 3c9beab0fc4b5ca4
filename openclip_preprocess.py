#!/usr/bin/env python3
"""Step 1: flickr30k Karpathy test set → images/{stem}.npy, texts/{stem}_{k}.npy and manifest.json. (``openclip-ascend preprocess``; ``--help`` for the flags)."""

from openclip_ascend.cli import run
from openclip_ascend.commands.preprocess import main

if __name__ == "__main__":
    run(main)
