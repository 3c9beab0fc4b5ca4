"""Zero-shot classification (CLIP_benchmark's classifier and metrics) through the kit's towers and runner.

    python openclip_zeroshot.py --data-dir imagenet/val --dataset imagenet1k --model-name ViT-B-32 \\
        --pretrained open_clip_pytorch_model.bin --results-file zeroshot.json [--backend onnxruntime]
    python openclip_zeroshot.py --data-dir my_set --classnames names.txt --templates templates.txt ...
    python openclip_zeroshot.py ... --backend ascend --om-prefix models/vit_b_32 --batch-size 8

ROOT holds one folder of images per class; the folders sorted by name are the labels 0..C-1 (the
ImageNet-val layout). Class names and templates: --dataset's (CLIP_benchmark's, built in), or the
files (one name per line in label order; one template per line with {c} for the name), or the
folder names with "a photo of a {c}.". Every class × template prompt is tokenised and both towers
run over OUTPUT_DIR/prep with the same runner as step 4 (ONNX Runtime: the graphs under
--onnx-prefix, exported there first if missing, text trimmed to each batch's longest prompt;
Ascend: PREFIX_{vision,text}_bs{N}.om; torch: open_clip eager). The results file is CLIP_benchmark's
(dataset, model, pretrained, task, metrics: acc1, acc5, mean_per_class_recall).

The pipeline's two halves, as its steps 1 and 5 run them (TASK=zeroshot):

    python openclip_zeroshot.py --data-dir ROOT ... --output-dir OUT --prepare-only      # OUT/prep
    python openclip_zeroshot.py --prep OUT/prep --vision-embeds V --text-embeds T --results-file F
"""

import argparse

from ..run.sessions import BACKENDS
from . import described

RUNNABLE = [backend for backend in BACKENDS if backend != "auto"]


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=described(__doc__, prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="ROOT/<class folder>/*.jpg")
    parser.add_argument("--dataset", choices=["imagenet1k", "cifar10", "cifar100"],
                        help="built-in class names and templates (CLIP_benchmark's)")
    parser.add_argument("--classnames", help="file: one class name per line, in the class folders' sorted order")
    parser.add_argument("--templates", help="file: one prompt template per line, {c} for the class name")
    parser.add_argument("--model-name", default="ViT-B-32")
    parser.add_argument("--pretrained", help="checkpoint file or tag (default: the bundled weights for the tiny "
                                             "model, laion2b_s34b_b79k otherwise)")
    parser.add_argument("--backend", help=f"{', '.join(RUNNABLE)} (default onnxruntime); with --prep, the name the "
                                          "result carries")
    parser.add_argument("--onnx-prefix", help="ONNX graphs to run (default OUTPUT_DIR/models/<model>; exported if missing)")
    parser.add_argument("--om-prefix", help="OMs to run with --backend ascend: PREFIX_{vision,text}_bs{N}.om")
    parser.add_argument("--batch-size", type=int, default=8, help="(default 8)")
    parser.add_argument("--device", type=int, default=0, help="NPU id (ascend)")
    parser.add_argument("--workers", type=int, help="image preprocessing processes (default: the CPU count)")
    parser.add_argument("--output-dir", default="outputs/zeroshot", help="prep/, models/, infer/ (default: %(default)s)")
    parser.add_argument("--results-file", help="CLIP_benchmark-style JSON result")
    parser.add_argument("--prepare-only", action="store_true", help="write OUTPUT_DIR/prep (images, prompts) and stop")
    parser.add_argument("--prep", help="score a prepared set (OUTPUT_DIR/prep) from embeddings already computed: "
                                       "with --vision-embeds and --text-embeds")
    parser.add_argument("--vision-embeds", help="ais_bench output folder of the vision tower over PREP/images")
    parser.add_argument("--text-embeds", help="ais_bench output folder of the text tower over PREP/prompts")
    args = parser.parse_args(argv)

    from pathlib import Path

    from ..evaluate.zeroshot import evaluate_prepared, load_set, report_accuracy, run_zeroshot, write_prepared
    from ..files import KitError, write_json

    if args.prep:
        if not (args.vision_embeds and args.text_embeds and args.results_file):
            raise KitError("--prep scores embeddings already computed: give --vision-embeds, --text-embeds and "
                           "--results-file")
        record = evaluate_prepared(args.prep, args.vision_embeds, args.text_embeds, args.backend, args.batch_size)
        write_json(args.results_file, record)
        report_accuracy(record)
        return 1 if record["check"] == "failed" else 0
    if not args.data_dir:
        raise KitError("give --data-dir ROOT (one folder of images per class), or --prep with --vision-embeds and "
                       "--text-embeds")
    if args.batch_size < 1:
        raise KitError("--batch-size must be ≥ 1")
    data = load_set(args.data_dir, args.dataset, args.classnames, args.templates)
    if args.prepare_only:
        counts = write_prepared(Path(args.output_dir) / "prep", data, args.dataset or args.data_dir, args.model_name,
                                args.pretrained, args.workers)
        print(f"prepared {counts['images']} images and {counts['prompts']} prompts ({counts['classes']} classes) in "
              f"{Path(args.output_dir) / 'prep'}")
        return 0
    if not args.results_file:
        raise KitError("--results-file F: where CLIP_benchmark's result JSON goes")
    if args.backend and args.backend not in RUNNABLE:
        raise KitError(f"--backend {args.backend}: choose {', '.join(RUNNABLE)}")
    if args.backend == "ascend" and not args.om_prefix:
        raise KitError("--backend ascend needs --om-prefix (PREFIX_vision_bs{N}.om, PREFIX_text_bs{N}.om from "
                       "convert/onnx2om.py)")
    record = run_zeroshot(data, args.dataset or args.data_dir, args.model_name, args.pretrained,
                          args.backend or "onnxruntime", args.output_dir, args.results_file, args.batch_size,
                          onnx_prefix=args.onnx_prefix, om_prefix=args.om_prefix, device=args.device,
                          workers=args.workers)
    return 1 if record["check"] == "failed" else 0
