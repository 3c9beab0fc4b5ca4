"""What every top-level script shares: one-line errors, exit codes, the final JSON result."""

import json
import signal
import sys

from .files import KitError
from .stack import REQUIREMENTS, check_versions


def _terminate(signum, frame):
    raise KeyboardInterrupt  # unwind like Ctrl-C, so temporary files are removed on the way out


# exit codes: 0 success, 1 a check failed (its outputs written), 2 a problem the user can fix (one line),
# 3 an unexpected error (a bug in the kit or a tool it runs: traceback printed), 130 interrupted
EXIT_CHECK_FAILED, EXIT_USER_ERROR, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 1, 2, 3, 130
# modules the kit imports → the distribution that provides them (requirements.txt)
DISTRIBUTIONS = {{"Pillow": "PIL", "open_clip_torch": "open_clip"}.get(name, name): name for name in REQUIREMENTS}


def missing_module_message(exc):
    """One line for a requirement this Python lacks (e.g. the system python3 instead of the kit's .venv)."""
    top = (exc.name or "").split(".")[0]
    if top not in DISTRIBUTIONS:
        return None
    return (f"{sys.executable} has no module {top!r} ({DISTRIBUTIONS[top]}), one of the kit's requirements; run "
            "with the Python that has them (`make demo` or `make test` creates .venv: PYTHON=.venv/bin/python), "
            f"or install them into this one: {sys.executable} -m pip install -r requirements.txt")


def run(main):
    """Call ``main()`` and exit with the kit's codes: a KitError (or a missing requirement) is one line on
    stderr and exit 2; Ctrl-C or SIGTERM exit 130; any other exception is a bug: its traceback, then one
    line, exit 3 — distinct from a failed check's 1, so ``steps/run_all.sh`` stops on it."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        check_versions()
        result = main()
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept, no output is half-written", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except ModuleNotFoundError as exc:
        message = missing_module_message(exc)
        if message is None:
            _unexpected()
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception:  # the last resort: said as a bug, with its own exit code
        _unexpected()
    sys.exit(result or 0)


def _unexpected():
    import traceback

    traceback.print_exc()
    print(f"error: unexpected failure (exit {EXIT_UNEXPECTED}): a bug in the kit or in a tool it runs, not a setting "
          "to change; please report it with the traceback above", file=sys.stderr)
    sys.exit(EXIT_UNEXPECTED)


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


def str2bool(text):
    """ais_bench's boolean flags (``--dump 1``): yes/true/t/y/1 or no/false/f/n/0, any case."""
    import argparse

    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError("Boolean value expected true, 1, false, 0 with case insensitive.")
