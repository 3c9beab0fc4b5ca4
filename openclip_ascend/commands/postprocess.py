"""Step 5: recall@k (CLIP_benchmark's definition) from two ais_bench-layout embedding folders.

    python openclip_postprocess.py --vision-embeds results/vision --text-embeds results/text \\
        [--manifest prep/manifest.json] [--recall-k 1 5 10] [--results-file recall.json]

Prints a table of every requested k, the JSON result, then — last, as the reference does — an empty
line and ``Metrics: {'image_retrieval_recall@5': …, 'text_retrieval_recall@5': …}``. Exact ties are
counted against the positive (and said when they change a figure); degenerate embeddings (a collapsed
model) fail the check: a warning on stderr and exit code 1.
"""

import argparse
import sys

from ..cli import print_result
from ..evaluate.metrics import DEFAULT_RECALL_K
from ..evaluate.postprocess import degenerate_warning, evaluate_folders, retrieval_record, tie_note
from ..files import write_json
from ..markdown import markdown_table
from ..report.tables import metrics_line
from . import described


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=described(__doc__, prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision-embeds", default="./om_outputs/vision_embed_bs8",
                        help="ais_bench output folder of the vision tower (default: %(default)s)")
    parser.add_argument("--text-embeds", default="./om_outputs/text_embed_bs8",
                        help="ais_bench output folder of the text tower (default: %(default)s)")
    parser.add_argument("--manifest", help="manifest.json from openclip_preprocess.py (default: pair by file name)")
    parser.add_argument("--recall-k", type=int, nargs="+", default=list(DEFAULT_RECALL_K))
    parser.add_argument("--results-file", help="write the metrics as JSON here")
    args = parser.parse_args(argv)

    ks = sorted(set(args.recall_k) | {5})  # the Metrics line is recall@5
    result, counts = evaluate_folders(args.vision_embeds, args.text_embeds, args.manifest, ks)
    print(f"recall over {counts['images']} images and {counts['captions']} captions", end="")
    if counts["skipped_in_preprocessing"]:
        print(f"; {counts['skipped_in_preprocessing']} items were skipped in preprocessing (listed in the "
              "manifest's 'skipped'), so this is not the full set", end="")
    if counts["extra_outputs_ignored"]:
        print(f"; {counts['extra_outputs_ignored']} outputs not in the manifest were ignored", end="")
    print()
    rows = [[f"R@{k}", f"{result.metrics[f'image_retrieval_recall@{k}']:.4f}",
             f"{result.metrics[f'text_retrieval_recall@{k}']:.4f}"] for k in args.recall_k]
    print(markdown_table(["k", "image retrieval (text→image)", "text retrieval (image→text)"], rows))
    note = tie_note(result)
    if note:
        print(note)
    record = retrieval_record(result, counts)
    if args.results_file:
        write_json(args.results_file, record)
    print_result(record)
    warning = degenerate_warning(result.problems, f"{args.vision_embeds} + {args.text_embeds}")
    if warning:
        print(warning, file=sys.stderr)
    print()
    print(metrics_line(result))
    return 1 if warning else 0
