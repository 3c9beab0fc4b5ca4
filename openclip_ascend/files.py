"""File helpers shared by every step: atomic writes and the kit's user-facing error type."""

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path


class KitError(Exception):
    """A problem the user can fix: printed as one line naming the file or value, no traceback."""


def _process_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# outputs get the permissions any other tool's files get (0644 under the usual umask 022), not
# mkstemp's private 0600: report.md, arrays and JSON are meant to be read by others
FILE_MODE = 0o666 & ~_process_umask()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    An interrupted step therefore never leaves a half-written output under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staging_dir(path):
    """A temporary directory beside ``path``, removed afterwards: for outputs of several files (a graph
    and its external weights) that are finished by renaming them into place on the same file system."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as work:
        yield Path(work)


def save_npy(path, array):
    """Write ``array`` as ``.npy`` atomically (np.save would append a suffix to a temp name)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path):
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise KitError(f"{path}: not valid JSON ({exc}); delete it and re-run the step that wrote it") from exc


def natural_key(text):
    """Sort key that orders ``img2`` before ``img10``, as ais_bench orders its input files."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]
