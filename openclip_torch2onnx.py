#!/usr/bin/env python3
"""Step 2: export the vision and text towers to {prefix}_vision.onnx and {prefix}_text.onnx, then
check ONNX Runtime against PyTorch (max abs diff must stay ≤ 1e-4).

    python openclip_torch2onnx.py --model-name ViT-B-32 --pretrained open_clip_pytorch_model.bin \\
        --onnx-prefix models/vit_b_32 [--opset 14]
"""

import argparse

from openclip_ascend.cli import print_result, run
from openclip_ascend.export import DEFAULT_OPSET


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", default="ViT-B-32")
    parser.add_argument("--pretrained", default=None,
                        help="local checkpoint file, or a tag whose weights are already cached (omit: random weights)")
    parser.add_argument("--onnx-prefix", required=True, help="writes PREFIX_vision.onnx and PREFIX_text.onnx")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--towers", default="vision,text", help="comma-separated subset of vision,text")
    parser.add_argument("--skip-check", action="store_true", help="do not compare ONNX Runtime with PyTorch")
    args = parser.parse_args()

    from openclip_ascend.export import export_model
    from openclip_ascend.models import load_model

    model = load_model(args.model_name, args.pretrained)
    towers = [tower.strip() for tower in args.towers.split(",") if tower.strip()]
    report = export_model(model, args.onnx_prefix, towers, args.opset, check=not args.skip_check)
    for tower, entry in report.items():
        for batch, parity in (entry["parity"] or {}).items():
            print(f"{tower} batch {batch}: max abs diff {parity['max_abs_diff']:.2e}, "
                  f"min cosine {parity['min_cosine']:.8f}")
    print_result(report)


if __name__ == "__main__":
    run(main)
