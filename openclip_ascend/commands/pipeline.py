"""The numbered steps, all or some, on the bundled sample and tiny model by default:

    python openclip_pipeline.py --output-dir outputs/demo                  # steps 1-7
    python openclip_pipeline.py --output-dir outputs/demo --steps 5,6      # again from step 5
    python openclip_pipeline.py --output-dir outputs/flickr --data-dir flickr30k \\
        --model-name ViT-B-32 --pretrained open_clip_pytorch_model.bin --batch-sizes 1,4,8,16,32,64

    python openclip_pipeline.py --output-dir outputs/flickr --task zeroshot --data-dir imagenet/val \\
        --zeroshot-dataset imagenet1k --model-name ViT-B-32 --pretrained open_clip_pytorch_model.bin

Steps: 1 preprocess, 2 export ONNX, 3 convert to OM (Ascend), 4 infer, 5 accuracy, 6 performance,
7 report (report.md). Tasks: retrieval (flickr30k or MSCOCO) and zeroshot (classification over an
image folder); both in one run: --task retrieval,zeroshot with --zeroshot-dir for the classes.
Every flag has an environment variable (in brackets) so steps/*.sh share one configuration. Every
value is checked before step 1; the run's settings are kept in OUT/settings.json, so a later step run
alone uses them, and a different value for one that decides the outputs is refused unless
--reconfigure says to apply it. --backend auto uses the NPU where npu-smi is (and then needs atc,
ais_bench and aclruntime too), else ONNX Runtime on the CPU.
"""

import argparse
import os
import sys

from ..cli import EXIT_CHECK_FAILED
from . import described


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


def main(argv=None, prog=None, doc=__doc__):
    """``doc``: the help text (openclip_perf.py runs steps 6-7 through here with its own)."""
    from .. import settings

    parser = argparse.ArgumentParser(prog=prog, description=described(doc, prog),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=os.environ.get("OUT") or "outputs/demo", help="run folder [OUT]")
    parser.add_argument("--steps", default="1-7", help="e.g. 1-7, 4, 5,6")
    settings.add_arguments(parser)
    args = parser.parse_args(argv)

    from ..evaluate.postprocess import failed_checks
    from ..pipeline import RunConfig, run_steps

    steps = parse_steps(args.steps)
    values, stale = settings.merge(args.output_dir, settings.given_settings(args), settings.reconfigure_requested(args))
    config = RunConfig(output_dir=args.output_dir, stale=stale, **values)
    results = run_steps(config, steps)
    accuracy = results.get("accuracy") or {}
    failed = [f"{entry} ({task})" for task in config.tasks for entry in failed_checks(accuracy.get(task))] \
        if {5, 7} & set(steps) else []
    if failed:
        print(f"accuracy check FAILED for {', '.join(failed)}: degenerate embeddings (see "
              f"{config.output_dir / 'report.md'})", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return 0
