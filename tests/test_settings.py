"""The run's settings: every variable checked before anything runs, kept with the run, refused when
changed without --reconfigure; the exit codes that tell a failed check from a bug."""

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from openclip_ascend import settings
from openclip_ascend.commands.pipeline import main as pipeline
from openclip_ascend.files import KitError

ROOT = Path(__file__).resolve().parents[1]


def given(environ, *flags):
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.given_settings(parser.parse_args(list(flags)), environ)


@pytest.mark.parametrize("name,value,message", [
    ("PERF_LOOPS", "0", "PERF_LOOPS=0: expected a whole number ≥ 1"),
    ("PERF_LOOPS", "abc", "PERF_LOOPS=abc: expected a whole number ≥ 1"),
    ("WORKERS", "x", "WORKERS=x: expected a whole number ≥ 1"),
    ("INT8", "on", "INT8=on: expected 1/0, yes/no or true/false"),
    ("REFERENCE", "nope", "REFERENCE=nope: expected 1/0, yes/no or true/false"),
    ("BATCH_SIZES", "1,4,4", "BATCH_SIZES=1,4,4: 4 appears twice"),
    ("OPSET", "19", "OPSET=19: expected a whole number from 11 to 17"),
    ("PRECISION", "fast", "PRECISION=fast: 'fast' is neither a preset"),
    ("PRECISION", "vision=fp16,txt=fp32", "PRECISION=vision=fp16,txt=fp32: write MODE, or TOWER=MODE pairs"),
    ("BACKEND", "gpu", "BACKEND=gpu: choose auto, ascend, onnxruntime"),
    ("TASK", "detection", "TASK=detection: the tasks are retrieval and zeroshot"),
    ("DATA_DIR", "/no/such/folder", "DATA_DIR=/no/such/folder: no such folder"),
    ("SOC_VERSION", "910B4", "SOC_VERSION=910B4: expected atc's --soc_version"),
    ("VARIANTS", "turbo", "VARIANTS=turbo:"),
    ("PEAK_TFLOPS", "0", "PEAK_TFLOPS=0: expected a number > 0"),
    ("ON_ERROR", "ignore", "ON_ERROR=ignore: choose stop, skip"),
    ("RECONFIGURE", "please", "RECONFIGURE=please: expected 1/0"),
])
def test_a_bad_value_is_one_line_before_anything_is_written(tmp_path, monkeypatch, name, value, message):
    out = tmp_path / "run"
    monkeypatch.setenv(name, value)
    with pytest.raises(KitError) as error:
        pipeline(["--output-dir", str(out)])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert not out.exists()


def test_flags_are_named_as_flags():
    with pytest.raises(KitError, match=r"^--perf-loops 0: expected a whole number ≥ 1"):
        given({}, "--perf-loops", "0")


@pytest.mark.parametrize("text,value", [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("no", False),
                                        ("false", False)])
def test_booleans_take_words_as_well_as_digits(text, value):
    assert given({"INT8": text})["int8"][0] is value
    assert given({"REFERENCE": text})["reference"][0] is value


def test_a_flag_wins_over_its_variable_and_an_empty_variable_is_unset():
    assert given({"BATCH_SIZES": "1,4"}, "--batch-sizes", "2,8")["batch_sizes"][0] == [2, 8]
    assert "batch_sizes" not in given({"BATCH_SIZES": "  "})
    assert given({}, "--no-reference")["reference"][0] is False


def _report(out, *flags):
    pipeline(["--output-dir", str(out), "--steps", "7", *flags])
    return (out / "report.md").read_text()


def test_a_later_step_describes_the_run_that_made_it(tmp_path):
    """The issue's case: a ViT-B-32 random-weight run, then step 7 alone without MODEL_NAME must not rewrite
    the report as the bundled tiny model."""
    out = tmp_path / "run"
    report = _report(out, "--model-name", "ViT-B-32", "--pretrained", "none", "--batch-sizes", "1,8", "--int8")
    assert report.startswith("# ViT-B-32") and "**Random weights**" in report
    again = _report(out)  # nothing given: the run's settings, not the defaults
    assert again.startswith("# ViT-B-32") and "**Random weights**" in again
    recorded = json.loads((out / "settings.json").read_text())["settings"]
    assert recorded["model_name"] == "ViT-B-32" and recorded["batch_sizes"] == [1, 8] and recorded["int8"] is True


def test_a_changed_setting_is_refused_naming_both_values_then_applied_on_request(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _report(out, "--pretrained", "none", "--batch-sizes", "1,8")
    before = (out / "settings.json").read_bytes()
    monkeypatch.setenv("BATCH_SIZES", "1,4")
    with pytest.raises(KitError, match=r"^BATCH_SIZES=1,4 but this run has 1,8 \(.*settings.json\): .*--reconfigure"):
        pipeline(["--output-dir", str(out), "--steps", "7"])
    assert (out / "settings.json").read_bytes() == before  # refused: nothing rewritten
    monkeypatch.setenv("PERF_LOOPS", "50")  # operational: taken, and remembered
    monkeypatch.setenv("RECONFIGURE", "1")
    report = _report(out)
    saved = json.loads((out / "settings.json").read_text())
    assert saved["settings"]["batch_sizes"] == [1, 4] and saved["settings"]["perf_loops"] == 50
    assert saved["stale"] == {"from_step": 4, "changed": {"BATCH_SIZES": ["1,8", "1,4"]}}
    assert "**Stale figures**" in report and "BATCH_SIZES 1,8 → 1,4" in report and "--steps 4-7" in report


def test_stale_steps_clear_only_when_re_made_in_order(tmp_path):
    from openclip_ascend.pipeline import RunConfig

    config = RunConfig(tmp_path, backend="onnxruntime", stale={"from_step": 4, "changed": {"INT8": ["0", "1"]}})
    settings.record(config, [5])  # step 5 over step 4's stale outputs is stale itself
    assert settings.stored(tmp_path)["stale"]["from_step"] == 4
    for step in (4, 5, 6):
        settings.record(config, [step])
    assert settings.stored(tmp_path)["stale"]["from_step"] == 7
    settings.record(config, [7])
    assert "stale" not in settings.stored(tmp_path)


def test_another_task_joins_the_run_without_a_conflict(tmp_path):
    from openclip_ascend.pipeline import RunConfig

    settings.record(RunConfig(tmp_path, backend="onnxruntime"), [1])
    classes = tmp_path / "classes"
    classes.mkdir()
    values, stale = settings.merge(tmp_path, given({"TASK": "zeroshot", "DATA_DIR": str(classes)}))
    assert values["tasks"] == ["zeroshot"] and values["zeroshot_dir"] == str(classes) and values["data_dir"] is None
    assert stale is None
    settings.record(RunConfig(tmp_path, backend="onnxruntime", tasks=("zeroshot",)), [1])
    assert settings.merge(tmp_path, {})[0]["tasks"] == ["retrieval", "zeroshot"]  # later steps: both tasks


def test_the_report_lists_every_setting_a_rerun_needs(tmp_path):
    """An off value whose default is on (REFERENCE=0) and ACCURACY_SUBSET=0 (every image) change the run: they
    are listed; an off value a setting starts at (INT8=0, PERF_BUDGET=0) is not."""
    from openclip_ascend.pipeline import RunConfig

    settings.record(RunConfig(tmp_path, backend="onnxruntime", reference=False, accuracy_subset=0, perf_loops=20), [1])
    listed = dict(settings.recorded(tmp_path))
    assert listed["REFERENCE"] == "0" and listed["ACCURACY_SUBSET"] == "0" and listed["PERF_LOOPS"] == "20"
    assert "INT8" not in listed and "PERF_BUDGET" not in listed and listed["BACKEND"] == "onnxruntime"


def test_auto_is_compared_as_the_backend_it_resolves_to(tmp_path, monkeypatch):
    from openclip_ascend.pipeline import RunConfig

    monkeypatch.setenv("PATH", str(tmp_path))  # no npu-smi: auto is ONNX Runtime, as recorded
    settings.record(RunConfig(tmp_path, backend="onnxruntime"), [1])
    assert settings.merge(tmp_path, given({"BACKEND": "auto"}))[0]["backend"] == "auto"
    with pytest.raises(KitError, match="BACKEND=ascend but this run has onnxruntime"):
        settings.merge(tmp_path, given({"BACKEND": "ascend"}))


def test_shell_step_with_a_bad_variable_stops_before_step_one(tmp_path):
    """PERF_LOOPS=0 used to end in a traceback after steps 1-5 had run."""
    out = tmp_path / "run"
    env = {**os.environ, "OUT": str(out), "PERF_LOOPS": "0", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "steps" / "run_all.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and result.stderr == "error: PERF_LOOPS=0: expected a whole number ≥ 1\n"
    assert not out.exists()


def test_run_all_stops_on_an_unexpected_error_and_goes_on_after_a_failed_check(tmp_path):
    """Exit 1 (a failed check, outputs written) lets the later steps run; exit 3 (a bug) stops the run."""
    for code, ran in ((1, "1234567"), (3, "1")):
        log = tmp_path / f"steps{code}.log"
        fake = tmp_path / f"python{code}"  # stands for the interpreter: records the step, step 1 fails with `code`
        fake.write_text(f'#!/bin/sh\nstep="$3"; printf %s "$step" >> {log}\n[ "$step" = 1 ] && exit {code}\nexit 0\n')
        fake.chmod(0o755)
        env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": str(fake)}
        result = subprocess.run(["bash", str(ROOT / "steps" / "run_all.sh")], capture_output=True, text=True, env=env)
        assert result.returncode == code and log.read_text() == ran


def test_unexpected_errors_exit_3_with_their_traceback():
    code = "from openclip_ascend.cli import run\ndef main():\n    raise RuntimeError('boom')\nrun(main)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 3
    assert "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: unexpected failure (exit 3): a bug")


def test_a_python_without_the_requirements_is_one_line():
    """README's one-step example used to run the system python3 and print a 20-line traceback."""
    result = subprocess.run([sys.executable, "-S", str(ROOT / "openclip_pipeline.py"), "--output-dir", "unused"],
                            capture_output=True, text=True, cwd=ROOT)  # -S: no site-packages, as a bare python3
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {sys.executable} has no module ") and "pip install -r requirements.txt" \
        in result.stderr


def test_the_steps_take_the_kits_venv_when_python_is_unset():
    script = f'unset PYTHON; source "{ROOT}/steps/common.sh"; echo "$PYTHON"'
    venv = ROOT / ".venv" / "bin" / "python"
    chosen = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert chosen == (str(venv) if venv.exists() else "python3")


def test_outputs_are_readable_as_other_tools_files(tmp_path):
    """Written under the process umask (0644 under 022), not mkstemp's private 0600."""
    code = ("import os, sys; os.umask(0o022); from openclip_ascend.files import write_json, save_npy; "
            "write_json(sys.argv[1] + '/a.json', {}); import numpy; save_npy(sys.argv[1] + '/a.npy', numpy.zeros(2))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=ROOT)
    for name in ("a.json", "a.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
