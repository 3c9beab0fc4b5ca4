"""``openclip-ascend SUBCOMMAND [flags]``: one command for every step, each taking exactly the flags of
the top-level script Ascend users know (``openclip_preprocess.py`` → ``openclip-ascend preprocess``),
through the same code."""

import importlib
import sys

from ..cli import run

COMMANDS = {  # subcommand: (module, the script it stands for, what it does)
    "preprocess": ("preprocess", "openclip_preprocess.py", "step 1: images and captions to .npy and manifest.json"),
    "export": ("export", "openclip_torch2onnx.py", "step 2: both towers to ONNX, checked against PyTorch"),
    "convert": ("convert", "convert/onnx2om.py", "step 3: ONNX to OMs with atc, per batch size"),
    "infer": ("infer", "openclip_infer.py", "step 4: ais_bench-style inference (OM, ONNX Runtime, PyTorch)"),
    "postprocess": ("postprocess", "openclip_postprocess.py", "step 5: recall@k as CLIP_benchmark defines it"),
    "pipeline": ("pipeline", "openclip_pipeline.py", "the numbered steps, all or some"),
    "perf": ("perf", "openclip_perf.py", "steps 6-7 over a run folder, and the atc variant sweep"),
    "precision": ("precision", "openclip_precision.py", "where fp16 breaks a tower, and the smallest fp32 keep set"),
    "zeroshot": ("zeroshot", "openclip_zeroshot.py", "zero-shot classification with CLIP_benchmark's metrics"),
    "doctor": ("doctor", "openclip_doctor.py", "will a run work here, and on which path? (a minute)"),
}


def usage():
    lines = ["usage: openclip-ascend {" + ",".join(COMMANDS) + "} [flags]", "       openclip-ascend --version", ""]
    lines += [f"  {name:<12} {summary} ({script})" for name, (_, script, summary) in COMMANDS.items()]
    return "\n".join(lines + ["", "openclip-ascend SUBCOMMAND --help shows a subcommand's flags and examples."])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from .. import __version__

        print(f"openclip-ascend {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: {argv[0]!r}: not a subcommand; choose {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f".{COMMANDS[argv[0]][0]}", __name__)
    return module.main(argv[1:], prog=f"openclip-ascend {argv[0]}")


def console():
    """The ``openclip-ascend`` entry point."""
    run(main)


def described(doc, prog):
    """A command's help text with its examples as the user types them: ``openclip-ascend infer …`` when run as
    the ``openclip-ascend`` subcommand (after ``pip install``), ``python openclip_infer.py …`` from a checkout."""
    if not prog or not prog.startswith("openclip-ascend "):
        return doc
    for name, (_, script, _) in COMMANDS.items():
        doc = doc.replace(f"python {script}", f"openclip-ascend {name}")
    return doc
