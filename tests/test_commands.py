"""`pip install .` gives one `openclip-ascend` command whose subcommands take the top-level scripts' flags."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from openclip_ascend.commands import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_has_the_scripts_flags(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    ours = capsys.readouterr().out
    script = ROOT / COMMANDS[name][1]
    theirs = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert ours.startswith(f"usage: openclip-ascend {name}")
    flags = {word.strip("[],") for word in theirs.split() if word.startswith("--")}
    assert flags and flags == {word.strip("[],") for word in ours.split() if word.startswith("--")}


def test_unknown_subcommand_is_one_line(capsys):
    assert main(["evaluate"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: 'evaluate': not a subcommand; choose preprocess")


def test_pip_install_gives_the_command_and_the_bundled_model(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(ROOT)], check=True, capture_output=True)
    assert (target / "openclip_ascend" / "assets" / "openclip-ascend-tiny.safetensors").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, str(target / "bin" / "openclip-ascend"), "postprocess"],
                            capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 2  # the reference's default folders are not there: one line, no traceback
    assert result.stderr.strip() == ("error: om_outputs/vision_embed_bs8: embedding folder not found; point it at "
                                     "ais_bench's --output/--output_dirname")


def test_floors_match_the_requirements_and_the_floor_lane():
    import re

    from openclip_ascend.stack import FLOORS

    lower = dict(re.findall(r"^([A-Za-z_]+)>=([\d.]+)", (ROOT / "requirements.txt").read_text(), re.M))
    pinned = dict(re.findall(r"^([A-Za-z_]+)==([\d.]+)", (ROOT / "requirements-floor.txt").read_text(), re.M))
    for name, floor in FLOORS.items():
        assert lower[name] == floor, name
        assert pinned[name].startswith(floor + "."), name  # the floor lane installs that release


def test_an_older_package_stops_with_one_line(monkeypatch):
    from importlib import metadata

    from openclip_ascend.files import KitError
    from openclip_ascend.stack import check_versions

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "2.20.0" if name == "open_clip_torch" else real(name))
    with pytest.raises(KitError, match=r"^open_clip_torch 2\.20\.0 is older than 2\.24, the oldest this kit supports"):
        check_versions()


def test_version_and_every_subcommand_listed(capsys):
    from openclip_ascend import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out == f"openclip-ascend {__version__}\n"
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    for name, (_, script, _) in COMMANDS.items():
        assert f"  {name:<12} " in listing and f"({script})" in listing


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_examples_are_what_the_user_types(name, capsys):
    """After pip install the examples read `openclip-ascend NAME …`; a command's help is its own (perf is not the
    pipeline's), and no example line was joined to the next by a stray backslash."""
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = capsys.readouterr().out
    script = COMMANDS[name][1]
    assert f"python {script}" not in text
    description = text.split("options:")[0]
    if f"openclip-ascend {name} " in description or "python " in description:
        assert f"openclip-ascend {name} " in description
    for line in description.splitlines():  # a docstring's lone backslash joins two example lines into one
        assert not re.search(r"\S {4,}--", line), line
    if name == "perf":
        assert "Throughput sweep and report (steps 6 and 7)" in text
