"""What every top-level script shares: one-line errors, exit codes, the final JSON result."""

import json
import signal
import sys

from .files import KitError


def _terminate(signum, frame):
    raise KeyboardInterrupt  # unwind like Ctrl-C, so temporary files are removed on the way out


def run(main):
    """Call ``main()``; a KitError becomes one line on stderr and exit code 2, Ctrl-C or SIGTERM exit 130."""
    from .stack import check_versions

    signal.signal(signal.SIGTERM, _terminate)
    try:
        check_versions()
        result = main()
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept, no output is half-written", file=sys.stderr)
        sys.exit(130)
    sys.exit(result or 0)


def print_result(result):
    """timm-style: one JSON document at the end of the run."""
    print(json.dumps(result, indent=2, ensure_ascii=False, default=str))


def csv_ints(text, minimum=1):
    """``"1,4,8"`` → ``[1, 4, 8]`` for --batch-sizes / --device style flags."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError as exc:
        raise KitError(f"{text!r}: expected comma-separated whole numbers such as 1,4,8") from exc
    if not values or any(value < minimum for value in values):
        raise KitError(f"{text!r}: expected comma-separated whole numbers ≥ {minimum} such as 1,4,8")
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise KitError(f"{text!r}: {repeated[0]} appears twice; each value names its own outputs, give it once")
    return values


def parse_text_lengths(text):
    """``"dyn,32"`` → ``["dyn", 32]`` for --text-lengths / TEXT_LENGTHS."""
    from .text_lengths import DYNAMIC_LENGTH

    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    numbers = [part for part in parts if part != DYNAMIC_LENGTH]
    return [DYNAMIC_LENGTH] * (DYNAMIC_LENGTH in parts) + (csv_ints(",".join(numbers), minimum=3) if numbers else [])


def str2bool(text):
    """ais_bench's boolean flags (``--dump 1``): yes/true/t/y/1 or no/false/f/n/0, any case."""
    import argparse

    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError("Boolean value expected true, 1, false, 0 with case insensitive.")
