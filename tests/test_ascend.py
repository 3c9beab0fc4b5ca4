"""The Ascend path without an NPU: recorded npu-smi tables and stand-in atc / ais_bench (tests/fakes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openclip_ascend import aisbench
from openclip_ascend.atc import plan_jobs, run_jobs
from openclip_ascend.backends import AscendSession, OnnxRuntimeSession, open_session
from openclip_ascend.export import onnx_path
from openclip_ascend.files import KitError
from openclip_ascend.npu import detect_soc_version, parse_npu_smi, soc_version_of
from openclip_ascend.postprocess import evaluate_folders
from openclip_ascend.runner import infer, infer_devices

HERE = Path(__file__).resolve().parent
FAKES = HERE / "fakes"
NPU_SMI = HERE / "data" / "npu_smi"
ROOT = HERE.parent


def forget_ais_bench(monkeypatch):
    """Drop imported ais_bench modules so the next import finds the package now on the path."""
    for name in [m for m in sys.modules if m == "ais_bench" or m.startswith("ais_bench.")]:
        monkeypatch.delitem(sys.modules, name)


@pytest.fixture()
def tools(monkeypatch, tmp_path):
    """Stand-ins on PATH and PYTHONPATH; returns a reader of their recorded calls."""
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", f"{FAKES}{os.pathsep}{ROOT}")
    monkeypatch.setenv("FAKE_TOOL_LOG", str(log))
    monkeypatch.setenv("FAKE_NPU_SMI_OUTPUT", str(NPU_SMI / "910B4.txt"))
    monkeypatch.syspath_prepend(str(FAKES))
    forget_ais_bench(monkeypatch)

    def calls(tool=None):
        if not log.exists():
            return []
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        return [e for e in entries if tool is None or e["tool"] == tool]

    return calls


# --- chip detection ---------------------------------------------------------------------------

@pytest.mark.parametrize("table,soc,count", [("310P3_two_cards.txt", "Ascend310P3", 2), ("910B4.txt", "Ascend910B4", 1),
                                             ("910B3_alarm_with_process.txt", "Ascend910B3", 2)])
def test_parse_recorded_npu_smi(table, soc, count):
    chips = parse_npu_smi((NPU_SMI / table).read_text())
    assert len(chips) == count and soc_version_of(chips) == soc
    assert [chip.npu_id for chip in chips] == list(range(count))


def test_alarm_health_is_reported(tools, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_SMI_OUTPUT", str(NPU_SMI / "910B3_alarm_with_process.txt"))
    soc, chips, warnings = detect_soc_version()
    assert soc == "Ascend910B3" and chips[0].health == "Alarm"
    assert warnings == ["NPU 0 (910B3) reports Health Alarm"]
    assert tools("npu-smi") == [{"tool": "npu-smi", "argv": ["info"]}]


def test_a3_name_is_not_guessed(tools, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_SMI_OUTPUT", str(NPU_SMI / "A3_ascend910.txt"))
    with pytest.raises(KitError, match="not a soc version.*--soc-version"):
        detect_soc_version()


def test_override_wins_without_calling_npu_smi(tools):
    assert detect_soc_version("Ascend310P3")[0] == "Ascend310P3"
    assert tools("npu-smi") == []


def test_no_npu_smi_asks_for_soc_version(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KitError, match="npu-smi not found.*--soc-version"):
        detect_soc_version()


def test_npu_smi_failure_is_named(tools, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_SMI_EXIT", "3")
    with pytest.raises(KitError, match="npu-smi info failed \\(exit 3: dcmi"):
        detect_soc_version()


# --- atc --------------------------------------------------------------------------------------

def convert(*flags, env=None):
    return subprocess.run([sys.executable, str(ROOT / "convert" / "onnx2om.py"), *flags], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_dry_run_prints_the_reference_commands(tools, tiny_onnx):
    result = convert("--onnx-prefix", str(tiny_onnx), "--batch-sizes", "1,64", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines == [
        f"atc --framework=5 --model={tiny_onnx}_vision.onnx --output={tiny_onnx}_vision_bs1 --input_format=NCHW "
        "--input_shape=image:1,3,224,224 --log=error --soc_version=Ascend910B4",
        f"atc --framework=5 --model={tiny_onnx}_vision.onnx --output={tiny_onnx}_vision_bs64 --input_format=NCHW "
        "--input_shape=image:64,3,224,224 --log=error --soc_version=Ascend910B4",
        f"atc --framework=5 --model={tiny_onnx}_text.onnx --output={tiny_onnx}_text_bs1 --input_format=ND "
        "--input_shape=text:1,77 --log=error --soc_version=Ascend910B4",
        f"atc --framework=5 --model={tiny_onnx}_text.onnx --output={tiny_onnx}_text_bs64 --input_format=ND "
        "--input_shape=text:64,77 --log=error --soc_version=Ascend910B4",
    ]
    assert tools("atc") == []


def test_compile_skip_force_and_suffix(tools, tiny_onnx, tmp_path):
    out = tmp_path / "oms"
    flags = ["--onnx-prefix", str(tiny_onnx), "--batch-sizes", "1,4", "--output-dir", str(out), "--jobs", "2"]
    result = convert(*flags, env={"FAKE_ATC_SUFFIX": "_linux_x86_64"})
    assert result.returncode == 0, result.stderr
    produced = sorted(p.name for p in out.glob("*.om"))
    assert produced == [f"tiny_{t}_bs{b}_linux_x86_64.om" for t in ("text", "vision") for b in (1, 4)]
    assert "ATC run success" in (out / "tiny_vision_bs4.atc.log").read_text()
    assert len(tools("atc")) == 4
    again = convert(*flags, env={"FAKE_ATC_SUFFIX": "_linux_x86_64"})
    assert again.returncode == 0 and again.stdout.count("| skipped |") == 4 and len(tools("atc")) == 4
    forced = convert(*flags, "--force", env={"FAKE_ATC_SUFFIX": "_linux_x86_64"})
    assert forced.returncode == 0 and forced.stdout.count("| ok |") == 4 and len(tools("atc")) == 8
    changed = convert(*flags, "--atc-args=--op_select_implmode=high_performance", env={"FAKE_ATC_SUFFIX": "_linux_x86_64"})
    assert changed.stdout.count("| ok |") == 4  # another command: not up to date
    assert tools("atc")[-1]["argv"][-1] == "--op_select_implmode=high_performance"


def test_bs1_om_is_not_mistaken_for_bs16(tools, tiny_onnx, tmp_path):
    jobs = plan_jobs(tiny_onnx, ["text"], [16], "Ascend910B4", tmp_path)
    (tmp_path / "tiny_text_bs1.om").write_text("{}")
    (tmp_path / "tiny_text_bs1.atc.json").write_text(json.dumps({"command": jobs[0].command}))
    assert run_jobs(jobs)[0].om.name == "tiny_text_bs16.om"


def test_one_failing_batch_size_does_not_stop_the_others(tools, tiny_onnx, tmp_path):
    result = convert("--onnx-prefix", str(tiny_onnx), "--batch-sizes", "1,8", "--output-dir", str(tmp_path),
                     env={"FAKE_ATC_FAIL_SHAPE": "image:8,", "FAKE_ATC_FAIL_CODE": "EZ3003"})
    assert result.returncode == 1
    rows = [line for line in result.stdout.splitlines() if line.startswith("| vision | 8 |")]
    assert rows and "| failed |" in rows[0] and "EZ3003" in rows[0]
    assert sorted(p.name for p in tmp_path.glob("*.om")) == ["tiny_text_bs1.om", "tiny_text_bs8.om", "tiny_vision_bs1.om"]
    assert "1 of 4 atc compiles failed" in result.stderr and "tiny_vision_bs8.atc.log" in result.stderr


def test_dynamic_batch_and_precision(tools, tiny_onnx, tmp_path):
    result = convert("--onnx-prefix", str(tiny_onnx), "--towers", "text", "--batch-sizes", "1,4,8", "--dynamic-batch",
                     "--precision-mode", "must_keep_origin_dtype", "--soc-version", "Ascend310P3",
                     "--output-dir", str(tmp_path), "--tag", "fp32")
    assert result.returncode == 0, result.stderr
    (call,) = tools("atc")
    assert "--input_shape=text:-1,77" in call["argv"] and "--dynamic_batch_size=1,4,8" in call["argv"]
    assert "--precision_mode=must_keep_origin_dtype" in call["argv"] and "--soc_version=Ascend310P3" in call["argv"]
    assert (tmp_path / "tiny_text_dynbs_fp32.om").is_file() and tools("npu-smi") == []


def test_precision_presets_per_tower(tools, tiny_onnx, tmp_path):
    result = convert("--onnx-prefix", str(tiny_onnx), "--batch-sizes", "4", "--precision-mode", "vision=mixed,text=fp32",
                     "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    calls = {("image:" in " ".join(c["argv"])): c["argv"] for c in tools("atc")}
    vision, text = calls[True], calls[False]
    keep = tmp_path / "tiny_vision_bs4.keep_dtype.cfg"
    assert "--precision_mode=force_fp16" in vision and f"--keep_dtype={keep}" in vision
    assert "--precision_mode=must_keep_origin_dtype" in text and not any(a.startswith("--keep_dtype") for a in text)
    nodes = keep.read_text().split()
    assert any("/ln_1/" in n for n in nodes) and any("/ln_post/" in n for n in nodes)
    assert any(n.endswith("Softmax") for n in nodes) and nodes[-1].endswith("/Div")  # the L2 normalisation
    assert not any("/mlp/" in n for n in nodes)  # the matrix products stay fp16


def test_raw_atc_precision_mode_passes_through(tiny_onnx, tmp_path):
    (job,) = plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", tmp_path, precision_mode="allow_mix_precision")
    assert job.command[-1] == "--precision_mode=allow_mix_precision"
    with pytest.raises(KitError, match="TOWER=MODE"):
        plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", tmp_path, precision_mode="audio=fp16")


def test_both_precision_flags_are_refused(tiny_onnx):
    with pytest.raises(KitError, match="cannot be combined"):
        plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", precision_mode="force_fp32", precision_mode_v2="origin")


def test_missing_atc_says_to_source_cann(tiny_onnx, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KitError, match="set_env.sh"):
        run_jobs(plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", tmp_path))


# --- the Ascend backend -------------------------------------------------------------------------

@pytest.fixture()
def oms(tools, tiny_onnx, tmp_path):
    """bs4 OMs of both towers and a dynamic-batch text OM, compiled by the stand-in atc."""
    out = tmp_path / "oms"
    jobs = plan_jobs(tiny_onnx, ["vision", "text"], [4], "Ascend910B4", out)
    jobs += plan_jobs(tiny_onnx, ["text"], [1, 4, 8], "Ascend910B4", out, dynamic_batch=True)
    assert all(job.status == "ok" for job in run_jobs(jobs))
    return {f"{job.tower}_{'dyn' if ',' in job.batch else job.batch}": job.om for job in jobs}


def test_ten_files_at_batch_four_through_infer_session(oms, tiny_onnx, prep_dir, tmp_path):
    session = open_session("auto", str(oms["vision_4"]))
    assert isinstance(session, AscendSession) and session.input_shape == (4, 3, 224, 224)
    summary = infer(session, input=str(prep_dir / "images"), output=str(tmp_path), output_dirname="om",
                    outfmt="NPY")  # the stand-in raises unless every feed is exactly 4 samples
    reference = OnnxRuntimeSession(onnx_path(tiny_onnx, "vision"))
    outputs = sorted((tmp_path / "om").glob("*_0.npy"))
    assert len(outputs) == 10 and summary["NPU_compute_time"]["count"] == 3
    for path in outputs:
        sample = np.load(prep_dir / "images" / path.name.replace("_0.npy", ".npy"))
        assert np.allclose(np.load(path), reference.run(sample), atol=1e-5)
    assert summary["throughput"] == pytest.approx(4000 / summary["NPU_compute_time"]["mean"])


def test_dynamic_batch_gear(oms, prep_dir, tmp_path):
    session = open_session("auto", str(oms["text_dyn"]), dym_batch=8)
    summary = infer(session, input=str(prep_dir / "texts"), output=str(tmp_path), output_dirname="t", outfmt="NPY")
    assert summary["batchsize"] == 8 and len(list((tmp_path / "t").glob("*_0.npy"))) == 50
    with pytest.raises(RuntimeError, match="not a gear"):
        open_session("auto", str(oms["text_dyn"]), dym_batch=3)


def test_multi_device_split(oms, prep_dir, tmp_path, capsys):
    summary = infer_devices({"backend": "auto", "model": str(oms["vision_4"])}, [0, 1], input=str(prep_dir / "images"),
                            output=str(tmp_path), output_dirname="md", outfmt="NPY")
    counts = {d: len(list((tmp_path / "md" / f"device{d}").glob("*_0.npy"))) for d in (0, 1)}
    assert counts == {0: 5, 1: 5}
    assert summary["throughput"] == pytest.approx(sum(s["throughput"] for s in summary["devices"].values()))
    _, total = aisbench.parse_throughput(capsys.readouterr().out)
    assert total == pytest.approx(summary["throughput"])


def test_recall_through_om_equals_onnx_runtime(oms, tiny_onnx, prep_dir, tmp_path):
    for name, model in (("om", oms), ("onnx", None)):
        for tower, folder in (("vision", "images"), ("text", "texts")):
            session = open_session("auto", str(model[f"{tower}_4"]) if model else str(onnx_path(tiny_onnx, tower)))
            infer(session, input=str(prep_dir / folder), output=str(tmp_path / name), output_dirname=tower,
                  outfmt="NPY", batchsize=4)
    om_metrics, _ = evaluate_folders(tmp_path / "om" / "vision", tmp_path / "om" / "text", prep_dir / "manifest.json")
    onnx_metrics, _ = evaluate_folders(tmp_path / "onnx" / "vision", tmp_path / "onnx" / "text",
                                       prep_dir / "manifest.json")
    assert om_metrics == onnx_metrics


@pytest.mark.parametrize("wording", [0, 1, 2])
def test_pass_through_parses_every_wording(oms, prep_dir, tmp_path, monkeypatch, tools, wording):
    monkeypatch.setenv("FAKE_AIS_BENCH_WORDING", str(wording))
    cmd = aisbench.command(oms["vision_4"], str(prep_dir / "images"), str(tmp_path), "pt", "NPY", batchsize=4)
    assert cmd[1:] == ["-m", "ais_bench", "--model", str(oms["vision_4"]), "--input", str(prep_dir / "images"),
                       "--output", str(tmp_path), "--output_dirname", "pt", "--outfmt", "NPY", "--batchsize", "4",
                       "--device", "0"]
    result = aisbench.run(cmd, str(tmp_path), "pt")
    assert result["throughput"] == pytest.approx(result["summary"]["throughput"])
    assert result["lines"][0]["batchsize"] == 4 and len(list((tmp_path / "pt").glob("*_0.npy"))) == 10
    assert tools("ais_bench")[0]["argv"][:2] == ["--model", str(oms["vision_4"])]


def test_impostor_ais_bench_is_named(monkeypatch, tmp_path):
    site = tmp_path / "site"
    (site / "ais_bench").mkdir(parents=True)
    (site / "ais_bench" / "__init__.py").write_text("")
    dist = site / "ais_bench_benchmark-3.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ais-bench-benchmark\nVersion: 3.0\n")
    (dist / "top_level.txt").write_text("ais_bench\n")
    (dist / "RECORD").write_text("ais_bench/__init__.py,,\n")
    monkeypatch.syspath_prepend(str(site))
    forget_ais_bench(monkeypatch)
    (tmp_path / "x.om").write_text("{}")
    with pytest.raises(KitError, match="ais-bench-benchmark, an unrelated LLM-evaluation tool"):
        AscendSession(tmp_path / "x.om")


def test_missing_ais_bench_says_what_to_install(tmp_path, monkeypatch):
    forget_ais_bench(monkeypatch)
    monkeypatch.setitem(sys.modules, "ais_bench", None)
    (tmp_path / "x.om").write_text("{}")
    with pytest.raises(KitError, match="aclruntime and ais_bench wheels"):
        AscendSession(tmp_path / "x.om")
