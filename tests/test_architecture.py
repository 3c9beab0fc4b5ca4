"""The package reads as the numbered steps and its layers depend one way only (docs/architecture.md): every import
of the kit's own code, at module or function level, goes to the same package or to a layer below."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "openclip_ascend"
BASE = {"files", "cli", "stack", "markdown", "agreement", "onnx_runtime", "__init__"}
LAYERS = [BASE, {"model"}, {"data"}, {"ascend", "run"}, {"evaluate"}, {"report"}]  # lowest first; the rest: orchestration


def layer(unit):
    return next((rank for rank, members in enumerate(LAYERS) if unit in members), len(LAYERS))


def unit_of(parts):
    """The package a module belongs to, or the module's own name for one at the top."""
    return parts[0]


def imports(path):
    """The kit's units (packages, or top-level modules) ``path`` imports."""
    folder = list(path.relative_to(PACKAGE).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):  # import openclip_ascend.x.y
            yield from (unit_of(alias.name.split(".")[1:]) for alias in node.names
                        if alias.name.startswith("openclip_ascend."))
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = folder[:len(folder) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
        elif (node.module or "").split(".")[0] == "openclip_ascend":
            target = node.module.split(".")[1:]
        else:
            continue
        if not target:  # from . import x: x is the unit (a package or module), or the package's own attribute
            yield from (alias.name if (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").is_file()
                        else "__init__" for alias in node.names)
        else:
            yield unit_of(target)


def test_each_layer_imports_only_its_own_package_and_the_layers_below():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        unit = unit_of(parts) if len(parts) > 1 else path.stem
        for other in imports(path):
            same_layer_allowed = layer(unit) == layer(other) == 0  # the base modules use each other
            if other != unit and layer(other) >= layer(unit) and layer(unit) < len(LAYERS) and not same_layer_allowed:
                wrong.append(f"{path.relative_to(PACKAGE)} ({unit}) imports {other}")
    assert not wrong, wrong


def test_the_packages_are_the_steps():
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert packages == ["ascend", "commands", "data", "evaluate", "model", "report", "run"]
    for name in packages:
        assert ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())), name
