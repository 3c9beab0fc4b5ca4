#!/usr/bin/env python3
"""Step 5: recall@k (CLIP_benchmark's definition) from two ais_bench-layout embedding folders.

    python openclip_postprocess.py --vision-embeds results/vision --text-embeds results/text \\
        [--manifest prep/manifest.json] [--recall-k 1 5 10] [--results-file recall.json]

Prints the reference line ``Metrics: {'image_retrieval_recall@5': …, 'text_retrieval_recall@5': …}``,
then a table of every requested k; ``--results-file`` writes JSON with CLIP_benchmark's keys.
"""

import argparse

from openclip_ascend.cli import print_result, run
from openclip_ascend.files import write_json
from openclip_ascend.metrics import DEFAULT_RECALL_K
from openclip_ascend.postprocess import evaluate_folders
from openclip_ascend.reports import markdown_table, metrics_line


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision-embeds", required=True, help="ais_bench output folder of the vision tower")
    parser.add_argument("--text-embeds", required=True, help="ais_bench output folder of the text tower")
    parser.add_argument("--manifest", help="manifest.json from openclip_preprocess.py (default: pair by file name)")
    parser.add_argument("--recall-k", type=int, nargs="+", default=list(DEFAULT_RECALL_K))
    parser.add_argument("--results-file", help="write the metrics as JSON here")
    args = parser.parse_args()

    metrics, counts = evaluate_folders(args.vision_embeds, args.text_embeds, args.manifest, args.recall_k)
    print(f"recall over {counts['images']} images and {counts['captions']} captions", end="")
    if counts["skipped_in_preprocessing"]:
        print(f"; {counts['skipped_in_preprocessing']} items were skipped in preprocessing (listed in the "
              "manifest's 'skipped'), so this is not the full set", end="")
    if counts["extra_outputs_ignored"]:
        print(f"; {counts['extra_outputs_ignored']} outputs not in the manifest were ignored", end="")
    print()
    if 5 in args.recall_k:
        print(metrics_line(metrics))
    rows = [[f"R@{k}", f"{metrics[f'image_retrieval_recall@{k}']:.4f}", f"{metrics[f'text_retrieval_recall@{k}']:.4f}"]
            for k in args.recall_k]
    print(markdown_table(["k", "image retrieval (text→image)", "text retrieval (image→text)"], rows))
    if args.results_file:
        write_json(args.results_file, metrics)
    print_result({**metrics, **counts})


if __name__ == "__main__":
    run(main)
