"""Run the kit in the Python an Ascend host already has (CANN's, often a conda env with torch and
torch_npu, where ais_bench and aclruntime are installed): pip constraints that keep every package
that Python already has in the kit's range, so ``pip install -r requirements.txt -c CONSTRAINTS``
installs only what is missing — never a second torch (3+ GB of CUDA libraries on x86_64, and a torch
that torch_npu was not built for).

    python -m openclip_ascend.host_packages > host-constraints.txt   # what `make run USE_HOST_PACKAGES=1` does

torch is kept as the host has it; a torchvision that is missing is pinned to the release made for that
torch (torchvision 0.N+15 for torch 2.N). Imports nothing beyond the standard library, so it runs in a
Python that has none of the kit's requirements yet.
"""

import sys

from .stack import REQUIREMENTS, fits, installed, release

KEEP_AS_IS = ("torch",)  # replacing it would break torch_npu and cost gigabytes: out of range is an error


def torchvision_for(torch_version):
    """The torchvision release series built for a torch 2.x release (``"2.1.0+cpu"`` → ``"0.16.*"``)."""
    major, minor = release(torch_version)[:2]
    return f"0.{minor + 15}.*" if major == 2 else None


def constraints(version_of=installed):
    """(constraint lines, notes for the user, error or None) for the Python running this."""
    lines, notes = [], []
    versions = {name: version_of(name) for name in REQUIREMENTS}
    for name, spec in REQUIREMENTS.items():
        version = versions[name]
        if version is None:
            continue
        if fits(version, spec):
            lines.append(f"{name}=={version}")
            notes.append(f"kept: {name} {version}")
        elif name in KEEP_AS_IS:
            return [], notes, (f"{sys.executable} has {name} {version}, outside the kit's range {spec}; replacing it "
                               "would download another torch and break torch_npu: use a Python whose torch is in "
                               "range, or run without USE_HOST_PACKAGES (a separate .venv)")
        else:
            notes.append(f"replaced in the venv: {name} {version} is outside {spec}")
    missing = {name: "" for name, version in versions.items() if version is None}
    torch = versions["torch"]
    paired = torchvision_for(torch) if torch else None
    if paired and "torchvision" in missing:
        lines.append(f"torchvision=={paired}")
        missing["torchvision"] = f" {paired} (made for torch {torch})"
    if missing:
        notes.append("to install: " + ", ".join(name + detail for name, detail in missing.items()))
    return lines, notes, None


def main():
    lines, notes, error = constraints()
    for note in notes:
        print(f"host packages: {note}", file=sys.stderr)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
