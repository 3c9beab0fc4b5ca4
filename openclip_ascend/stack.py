"""The oldest versions the kit supports (requirements.txt's lower bounds, which the floor lane tests):
an older one installed stops every command with one line naming the minimum, before a step fails on
a missing argument or attribute deep inside it. Read from package metadata, so nothing is imported."""

import re
from importlib import metadata

from .files import KitError

FLOORS = {"torch": "2.1", "torchvision": "0.16", "open_clip_torch": "2.24", "onnx": "1.14", "onnxruntime": "1.16",
          "numpy": "1.24", "Pillow": "9.5"}


def _release(version):
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def check_versions():
    """KitError for the first installed package older than its floor; absent packages are left to the
    step that needs them."""
    for name, floor in FLOORS.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if _release(installed) < _release(floor):
            raise KitError(f"{name} {installed} is older than {floor}, the oldest this kit supports; "
                           f"pip install '{name}>={floor}' (or: pip install -r requirements.txt)")
