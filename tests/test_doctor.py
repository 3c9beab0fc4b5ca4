"""First contact on an Ascend host: `openclip-ascend doctor`, BACKEND=auto on an NPU host, every NPU tool named
at once, and the host's own Python (its packages kept, only what is missing installed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openclip_ascend.files import KitError
from openclip_ascend.pipeline import RunConfig, resolve_backend, run_steps

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fakes"


def doctor(args, env, cwd):
    return subprocess.run([sys.executable, str(ROOT / "openclip_doctor.py"), *args], capture_output=True, text=True,
                          env=env, cwd=cwd)


def statuses(report):
    return {check["check"]: check["status"] for check in report["checks"]}


def test_doctor_runs_the_smoke_test_through_the_ascend_tools(tmp_path, stand_in_env):
    """With the stand-ins for npu-smi, atc, ais_bench and aclruntime and CANN's variables: the NPU path, the tiny
    model compiled per tower at batch 1 for the detected chip and compared with ONNX Runtime, the atc logs kept."""
    out = tmp_path / "doctor"
    result = doctor(["--output-dir", str(out), "--pretrained", "none"], stand_in_env("910B4.txt"), tmp_path)
    report = json.loads((out / "doctor.json").read_text())
    found = statuses(report)
    assert report["path"] == "npu"
    for check in ("CANN environment", "CANN version", "atc", "ais_bench", "aclruntime", "npu-smi", "soc version",
                  "NPU idle", "msprof", "smoke: CPU path", "smoke: NPU path"):
        assert found[check] == "ok", (check, report["checks"])
    assert "7.0.RC1" in next(c["found"] for c in report["checks"] if c["check"] == "CANN version")
    smoke = report["smoke"]
    assert {job["tower"]: job["status"] for job in smoke["atc"]} == {"vision": "ok", "text": "ok"}
    assert all(Path(job["log"]).is_file() and Path(job["log"]).parent == out / "smoke" for job in smoke["atc"])
    assert "--soc_version=Ascend910B4" in Path(smoke["atc"][0]["log"]).read_text()
    assert all(entry["min_cosine"] > 0.99 for entry in smoke["agreement"].values())
    assert {"atc vision bs1", "atc text bs1", "infer vision", "infer text"} <= set(smoke["seconds"])
    failing = [c for c in report["checks"] if c["status"] == "fail"]
    assert result.returncode == (1 if failing else 0) and report["ok"] is not failing
    assert (out / "doctor.md").read_text().startswith("# openclip-ascend doctor")
    assert "smoke: NPU path" in result.stdout and "The NPU (Ascend) path" in result.stdout


def test_doctor_without_cann_says_the_cpu_path_is_ready_and_why_not_the_npu(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    for name in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "PYTHONPATH"):
        env.pop(name, None)
    out = tmp_path / "doctor"
    result = doctor(["--output-dir", str(out), "--pretrained", "none", "--no-smoke"], env, tmp_path)
    report = json.loads((out / "doctor.json").read_text())
    found = statuses(report)
    assert report["path"] == "cpu" and "no npu-smi" in report["why"]
    assert all(found[check] == "warn" for check in ("atc", "ais_bench", "aclruntime", "npu-smi"))
    assert "smoke: CPU path" not in found  # --no-smoke
    failing = [c["check"] for c in report["checks"] if c["status"] == "fail"]
    assert set(failing) <= {"free disk"} and result.returncode == (1 if failing else 0)
    assert "CPU (ONNX Runtime fallback)" in result.stdout
    required = doctor(["--output-dir", str(tmp_path / "npu"), "--pretrained", "none", "--no-smoke", "--require-npu"],
                      env, tmp_path)
    assert required.returncode == 1
    lines = required.stderr.splitlines()
    for check in ("atc", "ais_bench", "aclruntime", "npu-smi"):
        assert sum(line.startswith(f"doctor: FAIL {check}: ") for line in lines) == 1, (check, lines)


def test_doctor_names_the_missing_pieces_on_an_npu_host(tmp_path, stand_in_env):
    """npu-smi answers, but this Python lacks ais_bench and aclruntime, and CANN is not sourced."""
    env = stand_in_env()
    env["PYTHONPATH"] = str(ROOT)  # the stand-in front end and back end are not importable
    for name in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        env.pop(name)
    out = tmp_path / "doctor"
    result = doctor(["--output-dir", str(out), "--pretrained", "none", "--no-smoke"], env, tmp_path)
    found = statuses(json.loads((out / "doctor.json").read_text()))
    assert result.returncode == 1
    assert found["ais_bench"] == found["aclruntime"] == found["CANN environment"] == "fail"
    assert found["atc"] == found["npu-smi"] == "ok"
    assert "doctor: FAIL ais_bench: not importable by" in result.stderr


def test_pypi_ais_bench_benchmark_is_recognised(tmp_path, monkeypatch):
    from openclip_ascend.doctor import _import_check

    site = tmp_path / "site"
    info = site / "ais_bench_benchmark-3.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ais_bench_benchmark\nVersion: 3.0\n")
    (info / "top_level.txt").write_text("ais_bench\n")
    monkeypatch.syspath_prepend(str(site))
    check = _import_check("ais_bench", "ais_bench.infer.interface", npu_path=True)
    assert check.status == "fail" and "PyPI's ais-bench-benchmark" in check.found
    assert check.advice.startswith("pip uninstall ais-bench-benchmark")


def test_doctor_reads_the_data_folder_as_step_one_would(sample_dir, tmp_path):
    import shutil

    from openclip_ascend.doctor import data_check

    folder = tmp_path / "data"
    shutil.copytree(sample_dir, folder)
    assert data_check(folder, "flickr30k", "retrieval").status == "ok"
    (folder / "1003.jpg").unlink()
    check = data_check(folder, "flickr30k", "retrieval")
    assert check.status == "warn" and "1 images missing (first: 1003.jpg)" in check.found and "ON_ERROR=skip" in \
        check.advice
    assert data_check(tmp_path / "nowhere", "flickr30k", "retrieval").status == "fail"


def test_cann_version_is_read_as_the_install_records_it(tmp_path):
    from openclip_ascend.ascend.npu_smi import cann_version

    (tmp_path / "aarch64-linux").mkdir()
    (tmp_path / "aarch64-linux" / "ascend_toolkit_install.info").write_text("package_name=Ascend-cann-toolkit\n"
                                                                          "version=8.0.RC2\narch=aarch64\n")
    assert cann_version(tmp_path)[0] == "8.0.RC2"
    (tmp_path / "compiler").mkdir()
    (tmp_path / "compiler" / "version.info").write_text("Version=7.0.RC1\nversion_dir=7.0.RC1\n")
    assert cann_version(tmp_path)[0] == "7.0.RC1"


# --- BACKEND on an NPU host -----------------------------------------------------------------------

def test_auto_without_npu_smi_runs_the_cpu_fallback_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    backend, reason = resolve_backend("auto")
    assert backend == "onnxruntime" and "no npu-smi" in reason


def without_stand_in_packages(monkeypatch):
    """This process as a Python without ais_bench and aclruntime (earlier tests may have imported the stand-ins)."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("ais_bench", "aclruntime")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if Path(entry).resolve() != FAKES])


def test_auto_on_an_npu_host_without_its_python_packages_stops(monkeypatch):
    """npu-smi and atc are there, ais_bench and aclruntime are not in this Python: never a silent CPU run."""
    without_stand_in_packages(monkeypatch)
    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(KitError) as error:
        resolve_backend("auto")
    message = str(error.value)
    assert message.startswith("BACKEND=auto found npu-smi (an NPU host), but ais_bench, aclruntime missing for ")
    assert "into this Python" in message and "BACKEND=onnxruntime" in message


def test_ascend_names_every_missing_tool_before_step_one(monkeypatch, tmp_path):
    without_stand_in_packages(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "run"
    with pytest.raises(KitError) as error:
        run_steps(RunConfig(out, backend="ascend", pretrained="none"))
    assert "npu-smi (or SOC_VERSION), atc, ais_bench, aclruntime missing" in str(error.value)
    assert not out.exists()
    with pytest.raises(KitError, match=r"but atc, ais_bench, aclruntime missing"):  # the soc version given
        run_steps(RunConfig(out, backend="ascend", soc_version="Ascend310P3", pretrained="none"), [3])


# --- the host's own Python ---------------------------------------------------------------------

def fake_site(folder, versions):
    """A site-packages folder whose distributions report ``versions`` (metadata only)."""
    for name, version in versions.items():
        info = folder / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


def host_constraints(site):
    """``python -m openclip_ascend.host_packages`` as a bare Python with ``site`` as its packages would run it."""
    code = (f"import sys; sys.path[:0] = [{str(site)!r}, {str(ROOT)!r}]; from openclip_ascend.host_packages import main; "
            "sys.exit(main())")
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)


def test_host_packages_are_kept_and_only_the_missing_installed(tmp_path):
    site = fake_site(tmp_path / "site", {"torch": "2.1.0+cpu", "torch_npu": "2.1.0.post3", "numpy": "1.24.4",
                                         "Pillow": "9.0.0"})
    result = host_constraints(site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["torch==2.1.0+cpu", "numpy==1.24.4", "torchvision==0.16.*"]
    assert "replaced in the venv: Pillow 9.0.0 is outside >=9.5" in result.stderr  # too old: the venv gets its own
    assert "torchvision 0.16.* (made for torch 2.1.0+cpu)" in result.stderr and "open_clip_torch" in result.stderr


def test_a_host_torch_outside_the_range_is_refused_not_replaced(tmp_path):
    result = host_constraints(fake_site(tmp_path / "site", {"torch": "1.11.0"}))
    assert result.returncode == 2 and result.stdout == ""
    assert "has torch 1.11.0, outside the kit's range >=2.1,<=2.14.1" in result.stderr


def test_make_run_with_host_packages_and_out(tmp_path):
    """`make run USE_HOST_PACKAGES=1 PYTHON=…` makes a venv that sees the host's packages and installs under the
    host constraints; OUT reaches the run."""
    def dry(*args):
        return subprocess.run(["make", "-n", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout

    host = dry("run", "USE_HOST_PACKAGES=1", "PYTHON=/opt/conda/bin/python", "DATA_DIR=/data/flickr30k",
               f"VENV={tmp_path / 'host'}")
    assert f"/opt/conda/bin/python -m venv --system-site-packages {tmp_path / 'host'}" in host
    assert f"-m openclip_ascend.host_packages > {tmp_path / 'host'}/host-constraints.txt" in host
    assert f"-m pip install -r requirements.txt -c {tmp_path / 'host'}/host-constraints.txt" in host
    assert f"PYTHON={tmp_path / 'host'}/bin/python bash steps/run_all.sh" in host
    assert "OUT=outputs/ViT-B-32 " in host
    assert "OUT=/runs/mine " in dry("run", "OUT=/runs/mine", "DATA_DIR=/data/flickr30k", f"VENV={tmp_path / 'plain'}")
