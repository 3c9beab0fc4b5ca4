#!/usr/bin/env python3
"""Step 1: flickr30k Karpathy test set → images/{stem}.npy, texts/{stem}_{k}.npy and manifest.json.

    python openclip_preprocess.py --data-dir flickr30k --save-dir prep [--model-name ViT-B-32] [--workers N]
"""

import argparse

from openclip_ascend.cli import print_result, run
from openclip_ascend.models import TINY_MODEL


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with the images and flickr30k_test_karpathy.txt")
    parser.add_argument("--save-dir", required=True, help="output folder (images/, texts/, manifest.json)")
    parser.add_argument("--model-name", default="ViT-B-32", help=f"open_clip model name (or {TINY_MODEL})")
    parser.add_argument("--pretrained", default=None,
                        help="pretrained tag whose own mean/std/interpolation apply (optional)")
    parser.add_argument("--workers", type=int, default=None, help="processes for images (default: all cores)")
    args = parser.parse_args()

    from openclip_ascend.preprocess import preprocess_dataset

    manifest = preprocess_dataset(args.data_dir, args.save_dir, args.model_name, args.pretrained, args.workers)
    print_result({"images": len(manifest.images), "captions": len(manifest.captions),
                  "save_dir": args.save_dir, "preprocess": manifest.preprocess})


if __name__ == "__main__":
    run(main)
