"""Step 1: flickr30k Karpathy test set → images/{stem}.npy, texts/{stem}_{k}.npy and manifest.json.

    python openclip_preprocess.py [--data-dir ./flickr30k_test1k] [--save-dir ./prep_data] [--model-name ViT-B-32]
        [--workers N]   (the defaults are the reference script's)
"""

import argparse
import sys

from ..cli import print_result
from ..model.loading import TINY_MODEL
from . import described


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=described(__doc__, prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="./flickr30k_test1k",
                        help="folder with the images and flickr30k_test_karpathy.txt (default: %(default)s)")
    parser.add_argument("--save-dir", default="./prep_data",
                        help="output folder: images/, texts/, manifest.json (default: %(default)s)")
    parser.add_argument("--model-name", default="ViT-B-32",
                        help=f"open_clip model name, or {TINY_MODEL} (default: %(default)s)")
    parser.add_argument("--pretrained", default=None,
                        help="pretrained tag whose own mean/std/interpolation apply (optional)")
    parser.add_argument("--workers", type=int, default=None, help="processes for images (default: all cores)")
    parser.add_argument("--on-error", default="stop", choices=["stop", "skip"],
                        help="bad image or caption line: stop with a message (default), or leave it out, record it "
                             "in the manifest and go on")
    parser.add_argument("--force", action="store_true", help="redo every output (default: keep valid ones)")
    parser.add_argument("--dataset", default="flickr30k", choices=["flickr30k", "mscoco"],
                        help="the data folder's layout: flickr30k (images + flickr30k_test_karpathy.txt) or mscoco "
                             "(CLIP_benchmark's: val2014/ + coco_test_karpathy.json) (default: %(default)s)")
    parser.add_argument("--uint8", action="store_true",
                        help="also SAVE_DIR/images_u8/{stem}.npy (uint8 1×H×W×3, the cropped image before "
                             "normalisation) and SAVE_DIR/aipp.cfg, for a vision OM that normalises on the chip "
                             "(atc --insert_op_conf; convert/onnx2om.py --variant aipp)")
    args = parser.parse_args(argv)

    from ..data.preprocess import preprocess_dataset

    manifest = preprocess_dataset(args.data_dir, args.save_dir, args.model_name, args.pretrained, args.workers,
                                  args.on_error, args.force, args.dataset)
    for entry in manifest.skipped:
        print(f"skipped: {entry['item']}: {entry['reason']}", file=sys.stderr)
    if args.uint8:
        from ..ascend.aipp import prepare_uint8

        print(f"uint8 images for AIPP: {prepare_uint8(args.save_dir).parent / 'images_u8'}")
    print_result({"images": len(manifest.images), "captions": len(manifest.captions), "skipped": len(manifest.skipped),
                  "unreferenced_images": manifest.unreferenced_images, "save_dir": args.save_dir,
                  "preprocess": manifest.preprocess})
