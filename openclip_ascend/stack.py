"""The versions the kit supports: requirements.txt's ranges, whose lower bounds the floor lane tests and
whose upper bounds are the newest releases tested. An installed package older than its floor stops
every command with one line naming the minimum, before a step fails on a missing argument or
attribute deep inside it; ``openclip-ascend doctor`` shows every range. Read from package metadata,
so nothing is imported."""

import re
from importlib import metadata

from .files import KitError

# requirements.txt, line for line (a test keeps the two equal)
REQUIREMENTS = {"torch": ">=2.1,<=2.14.1", "torchvision": ">=0.16,<=0.29.1", "open_clip_torch": ">=2.24,<4",
                "onnx": ">=1.14", "onnxruntime": ">=1.16", "numpy": ">=1.24", "Pillow": ">=9.5",
                "safetensors": ">=0.4", "tqdm": ">=4.66", "matplotlib": ">=3.7"}
FLOORS = {name: spec.split(",")[0][2:] for name, spec in REQUIREMENTS.items()}
_BOUND = re.compile(r"(>=|<=|==|<|>)\s*([\w.]+)")


def release(version):
    """``"2.1.0+cpu"`` → (2, 1, 0): the numeric release, local and pre-release parts dropped."""
    return tuple(int(part) for part in re.findall(r"\d+", re.split(r"[+a-z]", version.lower())[0])[:3])


def _padded(version, width=3):
    return version + (0,) * (width - len(version))


def fits(version, spec):
    """Whether ``version`` satisfies a requirement ``spec`` such as ``>=2.1,<=2.14.1`` (releases compared)."""
    have = _padded(release(version))
    checks = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
              "<": lambda a, b: a < b, ">": lambda a, b: a > b}
    return all(checks[op](have, _padded(release(bound))) for op, bound in _BOUND.findall(spec))


def installed(name):
    """The installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_versions():
    """KitError for the first installed package older than its floor; absent packages are left to the
    step that needs them (numpy alone runs step 5)."""
    for name, floor in FLOORS.items():
        version = installed(name)
        if version is not None and release(version) < release(floor):
            raise KitError(f"{name} {version} is older than {floor}, the oldest this kit supports; "
                           f"pip install '{name}>={floor}' (or: pip install -r requirements.txt)")
