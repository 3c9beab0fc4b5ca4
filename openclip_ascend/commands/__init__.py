"""``openclip-ascend SUBCOMMAND [flags]``: one command for every step, each taking exactly the flags of
the top-level script Ascend users know (``openclip_preprocess.py`` → ``openclip-ascend preprocess``),
through the same code."""

import importlib
import sys

from ..cli import run

COMMANDS = {  # subcommand: (module, the script it stands for)
    "preprocess": ("preprocess", "openclip_preprocess.py"),
    "export": ("export", "openclip_torch2onnx.py"),
    "convert": ("convert", "convert/onnx2om.py"),
    "infer": ("infer", "openclip_infer.py"),
    "postprocess": ("postprocess", "openclip_postprocess.py"),
    "pipeline": ("pipeline", "openclip_pipeline.py"),
    "perf": ("perf", "openclip_perf.py"),
    "precision": ("precision", "openclip_precision.py"),
    "zeroshot": ("zeroshot", "openclip_zeroshot.py"),
    "doctor": ("doctor", "openclip_doctor.py"),
}


def usage():
    lines = ["usage: openclip-ascend {" + ",".join(COMMANDS) + "} [flags]", ""]
    lines += [f"  {name:<12} the flags of {script}" for name, (_, script) in COMMANDS.items()]
    return "\n".join(lines + ["", "openclip-ascend SUBCOMMAND --help shows a subcommand's flags."])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: {argv[0]!r}: not a subcommand; choose {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f".{COMMANDS[argv[0]][0]}", __name__)
    return module.main(argv[1:], prog=f"openclip-ascend {argv[0]}")


def console():
    """The ``openclip-ascend`` entry point."""
    run(main)
