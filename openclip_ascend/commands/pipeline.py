"""The numbered steps, all or some, on the bundled sample and tiny model by default:

    python openclip_pipeline.py --output-dir outputs/demo                  # steps 1-7
    python openclip_pipeline.py --output-dir outputs/demo --steps 5,6      # again from step 5
    python openclip_pipeline.py --output-dir outputs/flickr --data-dir flickr30k \\
        --model-name ViT-B-32 --pretrained open_clip_pytorch_model.bin --batch-sizes 1,4,8,16,32,64

    python openclip_pipeline.py --output-dir outputs/flickr --task zeroshot --data-dir imagenet/val \
        --zeroshot-dataset imagenet1k --model-name ViT-B-32 --pretrained open_clip_pytorch_model.bin

Steps: 1 preprocess, 2 export ONNX, 3 convert to OM (Ascend), 4 infer, 5 accuracy, 6 performance,
7 report (report.md). Tasks: retrieval (flickr30k or MSCOCO) and zeroshot (classification over an
image folder); both in one run: --task retrieval,zeroshot with --zeroshot-dir for the classes.
Every flag has an environment variable (in brackets) so steps/*.sh share one configuration.
--backend auto uses the NPU when npu-smi, atc and ais_bench are present, else ONNX Runtime.
"""

import argparse
import os
import sys

from ..cli import csv_ints, parse_text_lengths
from ..models import TINY_MODEL


def env(name, default=None):
    return os.environ.get(name) or default


def parse_steps(text):
    """``1-7``, ``4``, ``5,6`` or ``1-3,6,7`` → step numbers in order; anything else is a one-line error."""
    from ..files import KitError

    steps = []
    for part in (part.strip() for part in text.split(",") if part.strip()):
        first, dash, last = part.partition("-")
        if not (first.isdigit() and (not dash or last.isdigit())):
            raise KitError(f"--steps {text}: write step numbers and ranges, e.g. 1-7, 5,6 or 1-3,6,7")
        steps += list(range(int(first), int(last) + 1)) if dash else [int(first)]
    return steps


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=env("OUT", "outputs/demo"), help="run folder [OUT]")
    parser.add_argument("--steps", default="1-7", help="e.g. 1-7, 4, 5,6")
    parser.add_argument("--task", default=env("TASK", "retrieval"),
                        help="retrieval, zeroshot or both, comma-separated (default retrieval) [TASK]")
    parser.add_argument("--data-dir", default=env("DATA_DIR"),
                        help="the data folder: flickr30k (or MSCOCO) for retrieval; with --task zeroshot alone, the "
                             "class folders; default: generate the sample [DATA_DIR]")
    parser.add_argument("--dataset", default=env("DATASET", "flickr30k"), choices=["flickr30k", "mscoco"],
                        help="DATA_DIR's layout: flickr30k, or mscoco (CLIP_benchmark's val2014/ + "
                             "coco_test_karpathy.json) [DATASET]")
    parser.add_argument("--zeroshot-dir", default=env("ZEROSHOT_DIR"),
                        help="zero-shot classes: ROOT/<class folder>/*.jpg, folders sorted by name = labels; default: "
                             "DATA_DIR with --task zeroshot alone, else generate the colour sample [ZEROSHOT_DIR]")
    parser.add_argument("--zeroshot-dataset", default=env("ZEROSHOT_DATASET"), choices=["imagenet1k", "cifar10", "cifar100"],
                        help="built-in class names and templates (CLIP_benchmark's) [ZEROSHOT_DATASET]")
    parser.add_argument("--classnames", default=env("CLASSNAMES"),
                        help="zero-shot class names, one per line in label order [CLASSNAMES]")
    parser.add_argument("--templates", default=env("TEMPLATES"),
                        help="zero-shot prompt templates, one per line with {c} for the class name [TEMPLATES]")
    parser.add_argument("--model-name", default=env("MODEL_NAME", TINY_MODEL), help="[MODEL_NAME]")
    parser.add_argument("--pretrained", default=env("PRETRAINED"),
                        help=f"checkpoint file or cached tag; {TINY_MODEL} defaults to its bundled weights [PRETRAINED]")
    parser.add_argument("--batch-sizes", default=env("BATCH_SIZES", "1,4,8"), help="[BATCH_SIZES]")
    parser.add_argument("--backend", default=env("BACKEND", "auto"), choices=["auto", "ascend", "onnxruntime"],
                        help="[BACKEND]")
    parser.add_argument("--soc-version", default=env("SOC_VERSION"), help="atc soc version; default: npu-smi [SOC_VERSION]")
    parser.add_argument("--no-reference", action="store_true", default=env("REFERENCE") == "0",
                        help="skip the PyTorch reference [REFERENCE=0]")
    parser.add_argument("--int8", action="store_true", default=env("INT8") == "1",
                        help="also run the int8 ONNX Runtime fallback [INT8=1]")
    parser.add_argument("--gpu", action="store_true", default=env("GPU") == "1",
                        help="also run the ONNX models on CUDA (needs onnxruntime-gpu) [GPU=1]")
    parser.add_argument("--fp16-estimate", action="store_true", default=env("FP16_ESTIMATE") == "1",
                        help="estimate an fp16 OM's accuracy on the CPU (fp16 rounding of weights and activations) "
                             "[FP16_ESTIMATE=1]")
    parser.add_argument("--aipp-estimate", action="store_true", default=env("AIPP_ESTIMATE") == "1",
                        help="estimate the accuracy cost of feeding the vision OM uint8 images normalised by AIPP "
                             "(its fp16 arithmetic emulated on the CPU) [AIPP_ESTIMATE=1]")
    parser.add_argument("--dynamic-batch", action="store_true", default=env("DYNAMIC_BATCH") == "1",
                        help="one dynamic-batch OM per tower, run at each batch size as a gear [DYNAMIC_BATCH=1]")
    parser.add_argument("--devices", default=env("DEVICES", "0"), help="NPU ids, e.g. 0,1 [DEVICES]")
    parser.add_argument("--precision-mode", default=env("PRECISION"),
                        help="atc precision: fp16, fp32, mixed, vision=mixed,text=fp16 or an atc mode [PRECISION]")
    parser.add_argument("--require-idle", action="store_true", default=env("REQUIRE_IDLE") == "1",
                        help="stop when npu-smi shows a device busy before step 6, instead of a warning "
                             "[REQUIRE_IDLE=1]")
    parser.add_argument("--perf-loops", type=int, default=int(env("PERF_LOOPS", "20")), help="[PERF_LOOPS]")
    parser.add_argument("--perf-budget", type=float, default=float(env("PERF_BUDGET", "0")),
                        help="seconds a noisy throughput figure may be measured again until stable [PERF_BUDGET]")
    parser.add_argument("--text-lengths", default=env("TEXT_LENGTHS", "dyn"),
                        help="exact text-length trimming: dyn (ONNX Runtime runs each batch of length-sorted captions "
                             "only as far as its longest), plus token counts such as 32 for static length-bucket OMs; "
                             "full: every caption at the full context (default dyn) [TEXT_LENGTHS]")
    parser.add_argument("--precision-search", action="store_true", default=env("PRECISION_SEARCH") == "1",
                        help="find each tower's nodes to keep in fp32 against the fp16 simulation (openclip_precision.py "
                             "search) after step 2; step 3 compiles with them unless --precision-mode is given "
                             "[PRECISION_SEARCH=1]")
    parser.add_argument("--variants", default=env("VARIANTS"),
                        help="Ascend: in step 6 also compile and compare atc preset combinations (base, npu, hp, "
                             "smallch, nofuseattn joined by +, e.g. base,npu,npu+hp,npu+hp+smallch) and choose the "
                             "fastest that keeps PyTorch's accuracy [VARIANTS]")
    parser.add_argument("--accuracy-subset", type=int, default=int(env("ACCURACY_SUBSET", "200")),
                        help="images the sweep judges accuracy on (0: all; default 200) [ACCURACY_SUBSET]")
    parser.add_argument("--profile", action="store_true", default=env("PROFILE") == "1",
                        help="Ascend: step 6 also runs each tower's OM at the largest batch size under msprof: time "
                             "per op type, AI CPU ops, achieved TFLOP/s [PROFILE=1]")
    parser.add_argument("--peak-tflops", type=float, default=env("PEAK_TFLOPS") and float(env("PEAK_TFLOPS")),
                        help="the chip's fp16 peak TFLOP/s, to set the profile's achieved figure beside [PEAK_TFLOPS]")
    parser.add_argument("--workers", type=int, default=env("WORKERS") and int(env("WORKERS")), help="[WORKERS]")
    parser.add_argument("--opset", type=int, default=env("OPSET") and int(env("OPSET")), help="[OPSET]")
    args = parser.parse_args(argv)

    from ..pipeline import RunConfig, run_steps
    from ..postprocess import failed_checks

    tasks = tuple(task.strip() for task in args.task.split(",") if task.strip())
    data_dir, zeroshot_dir = args.data_dir, args.zeroshot_dir
    if tasks == ("zeroshot",) and zeroshot_dir is None:  # TASK=zeroshot DATA_DIR=…: the classes
        data_dir, zeroshot_dir = None, data_dir
    config = RunConfig(output_dir=args.output_dir, model_name=args.model_name, pretrained=args.pretrained,
                       tasks=tasks, zeroshot_dir=zeroshot_dir, zeroshot_dataset=args.zeroshot_dataset,
                       classnames=args.classnames, templates=args.templates,
                       data_dir=data_dir, dataset=args.dataset, batch_sizes=tuple(csv_ints(args.batch_sizes)), backend=args.backend,
                       reference=not args.no_reference, int8=args.int8, gpu=args.gpu, fp16_estimate=args.fp16_estimate,
                       aipp_estimate=args.aipp_estimate,
                       dynamic_batch=args.dynamic_batch, devices=csv_ints(args.devices, minimum=0),
                       precision_mode=args.precision_mode, soc_version=args.soc_version, workers=args.workers,
                       opset=args.opset, perf_loops=args.perf_loops, perf_budget=args.perf_budget,
                       require_idle=args.require_idle, precision_search=args.precision_search,
                       variants=args.variants, accuracy_subset=args.accuracy_subset, profile=args.profile,
                       peak_tflops=args.peak_tflops,
                       text_lengths=[] if args.text_lengths == "full" else parse_text_lengths(args.text_lengths))
    steps = parse_steps(args.steps)
    results = run_steps(config, steps)
    accuracy = results.get("accuracy") or {}
    failed = [f"{entry} ({task})" for task in config.tasks for entry in failed_checks(accuracy.get(task))] \
        if {5, 7} & set(steps) else []
    if failed:
        print(f"accuracy check FAILED for {', '.join(failed)}: degenerate embeddings (see "
              f"{config.output_dir / 'report.md'})", file=sys.stderr)
        return 1
    return 0
