#!/usr/bin/env python3
"""The whole flickr30k-sized retrieval job: CLIP_benchmark's own evaluate against the kit's steps, in one run.

    python bench/bench_retrieval_job.py [--model-name ViT-B-32] [--images 1000] [--batch-size 64]
        [--pretrained CKPT] [--skip-amp] [--results-file bench/results/retrieval_job.json]

Data: the sample generator in its flickr30k shape (500×375 JPEGs, five captions each of flickr30k's
lengths: ~13 words, no punctuation, so CLIP_benchmark's annotation reader reads the same text). Both
sides load the same weights (random ones saved to a checkpoint unless --pretrained is given; speed and
the equality of the two recalls do not depend on them).

Timed, one after the other on the same machine:
- CLIP_benchmark ``zeroshot_retrieval.evaluate`` with its own Flickr dataset and collate function and
  its CLI's defaults (batch 64, 4 loader workers): ``amp=False`` (fp32, the exact reference) and its
  default ``amp=True`` (autocast: bf16 on a CPU, not fp32-exact);
- the kit's step 1 (preprocess), step 4 (ONNX Runtime, vision and text — the text graph runs each
  length-sorted batch only as far as its longest caption) and step 5 (recall), with the same code the
  pipeline runs; step 2 (export, once per model) is reported beside, not in the total. Beside it, the
  same with the text at the full 77 tokens, and the int8 fallback (step 1 timed once, counted in each).
Prints each step's seconds and share, the ratios, and both recalls (the fp32 ones must be equal).
"""

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openclip_ascend.data.dataset import ANNOTATION_FILE  # noqa: E402
from openclip_ascend.data.preprocess import preprocess_dataset  # noqa: E402
from openclip_ascend.data.sample import write_sample_dir  # noqa: E402
from openclip_ascend.evaluate.postprocess import evaluate_folders  # noqa: E402
from openclip_ascend.files import write_json, write_text  # noqa: E402
from openclip_ascend.markdown import markdown_table  # noqa: E402
from openclip_ascend.model.export import export_model, export_text_lengths, int8_path, onnx_path, quantize_int8  # noqa: E402
from openclip_ascend.model.loading import load_model  # noqa: E402
from openclip_ascend.model.text_lengths import DYNAMIC_LENGTH, text_graph  # noqa: E402
from openclip_ascend.report.writer import machine  # noqa: E402
from openclip_ascend.run.runner import infer  # noqa: E402
from openclip_ascend.run.sessions import OnnxRuntimeSession  # noqa: E402

RECALL_KEYS = ("image_retrieval_recall@5", "text_retrieval_recall@5")


def image_captions_collate(batch):
    """CLIP_benchmark's collate for flickr30k (datasets.builder.image_captions_collate_fn; that module
    imports every data set's dependencies, so it is not imported here): stacked images, caption lists."""
    images, captions = zip(*batch)
    return torch.utils.data.default_collate(list(images)), captions


def clip_benchmark_job(model_name, checkpoint, data_dir, batch_size, workers, amp):
    """CLIP_benchmark's evaluate as its CLI runs it for flickr30k (model, transform and tokenizer from
    open_clip, its Flickr dataset and collate function); returns (seconds, metrics)."""
    import open_clip
    from clip_benchmark.datasets.flickr import Flickr
    from clip_benchmark.metrics import zeroshot_retrieval

    # its CLI's 4 loader workers on a 2-core machine: torch warns, the run is as CLIP_benchmark makes it
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    start = time.perf_counter()
    model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=str(checkpoint))
    model.eval()
    dataset = Flickr(root=str(data_dir), ann_file=str(data_dir / ANNOTATION_FILE), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=image_captions_collate)
    metrics = zeroshot_retrieval.evaluate(model, loader, open_clip.get_tokenizer(model_name), "cpu", amp=amp,
                                          recall_k_list=[1, 5, 10])
    return time.perf_counter() - start, metrics


def kit_preprocess(model_name, checkpoint, data_dir, prep):
    """Step 1, timed; the kit's runs below share its arrays (the same work for each)."""
    start = time.perf_counter()
    preprocess_dataset(data_dir, prep, model_name, str(checkpoint), force=True)
    return time.perf_counter() - start


def kit_job(prep, out, batch_size, vision_model, text_model):
    """The kit's steps 4 and 5 as the pipeline runs them; returns ({step: seconds}, metrics, tokens)."""
    seconds, tokens = {}, None
    for tower, model, folder in (("vision", vision_model, "images"), ("text", text_model, "texts")):
        start = time.perf_counter()
        summary = infer(OnnxRuntimeSession(model), input=str(prep / folder), output=str(out), output_dirname=tower,
                        outfmt="NPY", batchsize=batch_size)
        seconds[f"step 4 {tower}"] = time.perf_counter() - start
        tokens = summary.get("tokens_per_sample", tokens)
    start = time.perf_counter()
    result, _ = evaluate_folders(out / "vision", out / "text", prep / "manifest.json")
    seconds["step 5 recall"] = time.perf_counter() - start
    return seconds, result.metrics_float32, tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", default="ViT-B-32")
    parser.add_argument("--pretrained", help="checkpoint file both sides load (default: random weights, saved)")
    parser.add_argument("--images", type=int, default=1000, help="images (five captions each; default 1000)")
    parser.add_argument("--batch-size", type=int, default=64, help="both sides (CLIP_benchmark's default 64)")
    parser.add_argument("--loader-workers", type=int, default=4, help="CLIP_benchmark's DataLoader workers (its CLI's "
                                                                        "default 4)")
    parser.add_argument("--skip-amp", action="store_true", help="skip CLIP_benchmark's autocast run")
    parser.add_argument("--work-dir", help="data and outputs (default: a temporary folder)")
    parser.add_argument("--results-file", default="bench/results/retrieval_job.json")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_job_"))
    data_dir = work / "data"
    if not (data_dir / ANNOTATION_FILE).is_file():
        write_sample_dir(data_dir, count=args.images, seed=30, flickr_like=True)
    checkpoint = Path(args.pretrained) if args.pretrained else work / "weights.pt"
    if not args.pretrained:
        import open_clip

        from openclip_ascend.model.loading import quiet_root_logger

        torch.manual_seed(0)
        with quiet_root_logger():  # open_clip's "no pretrained weights" line: random weights are the point here
            torch.save(open_clip.create_model(args.model_name).state_dict(), checkpoint)
    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"{args.images} images, {5 * args.images} captions, batch {args.batch_size}")

    start = time.perf_counter()
    model = load_model(args.model_name, str(checkpoint))
    prefix = work / "models" / "model"
    export_model(model, prefix)
    trimmed = text_graph(DYNAMIC_LENGTH)
    export_text_lengths(model, prefix, [DYNAMIC_LENGTH])
    quantize_int8(prefix, "vision")
    quantize_int8(prefix, trimmed)
    export_seconds = time.perf_counter() - start
    del model

    prep = work / "prep"
    preprocess = {"step 1 preprocess": kit_preprocess(args.model_name, checkpoint, data_dir, prep)}
    variants = {"kit fp32": (onnx_path(prefix, "vision"), onnx_path(prefix, trimmed)),
                "kit fp32, text at 77 tokens": (onnx_path(prefix, "vision"), onnx_path(prefix, "text")),
                "kit int8": (int8_path(prefix, "vision"), int8_path(prefix, trimmed))}
    runs = {}
    for index, (label, (vision_model, text_model)) in enumerate(variants.items()):
        seconds, metrics, tokens = kit_job(prep, work / f"infer{index}", args.batch_size, vision_model, text_model)
        runs[label] = ({**preprocess, **seconds}, metrics, tokens)
    peers = {"CLIP_benchmark fp32 (amp=False)": False} | ({} if args.skip_amp else {"CLIP_benchmark amp=True": True})
    for label, amp in peers.items():
        seconds, metrics = clip_benchmark_job(args.model_name, checkpoint, data_dir, args.batch_size,
                                              args.loader_workers, amp)
        runs[label] = ({"evaluate": seconds}, metrics, None)

    reference = sum(runs["CLIP_benchmark fp32 (amp=False)"][0].values())
    rows, records = [], {}
    for label, (seconds, metrics, tokens) in runs.items():
        total = sum(seconds.values())
        steps = ", ".join(f"{step} {value:.1f} s ({value / total:.0%})" for step, value in seconds.items())
        rows.append([label, f"{total:.1f}", f"{reference / total:.2f}×",
                     *(f"{metrics[key]:.4f}" for key in RECALL_KEYS), f"{tokens:.1f}" if tokens else "77", steps])
        records[label] = {"seconds": seconds, "total": total, "speedup_vs_clip_benchmark_fp32": reference / total,
                          "metrics": {key: metrics[key] for key in metrics if "recall" in key},
                          "text_tokens_per_caption": tokens}
    kit, peer = runs["kit fp32"][1], runs["CLIP_benchmark fp32 (amp=False)"][1]
    equal = all(kit[key] == peer[key] for key in RECALL_KEYS)
    table = markdown_table(["run", "seconds", "× CLIP_benchmark fp32", "image R@5", "text R@5", "text tokens",
                            "steps"], rows)
    lines = [table, "", f"Export (step 2, once per model, not in the totals): {export_seconds:.1f} s.",
             f"Recall@5, kit fp32 against CLIP_benchmark fp32: {'equal' if equal else 'DIFFERENT'}."]
    print("\n".join(lines))
    results = {"machine": info, "torch": torch.__version__, "images": args.images, "captions": 5 * args.images,
               "batch_size": args.batch_size, "model_name": args.model_name,
               "weights": args.pretrained or "random (seed 0)", "export_seconds": export_seconds, "runs": records,
               "recall_equal_fp32": equal}
    write_json(args.results_file, results)
    header = (f"# The flickr30k-sized job, CLIP_benchmark against the kit\n\n{info['cpu']}, {info['cores']} cores; "
              f"{args.model_name}, {args.images} images, {5 * args.images} captions, batch {args.batch_size}.\n\n")
    write_text(Path(args.results_file).with_suffix(".md"), header + "\n".join(lines) + "\n")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
