"""End to end on the demo sample with the bundled tiny model: `make demo` and the numbered steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openclip_ascend.pipeline import RunConfig, resolve_backend, run_steps

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fakes"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    config = RunConfig(out, batch_sizes=(1, 4), workers=2, perf_loops=3, backend="onnxruntime", int8=True,
                       fp16_estimate=True)
    return out, run_steps(config)


def test_demo_recall_floor_and_backend_agreement(demo):
    _, results = demo
    by_backend = {(r["backend"], r["batch_size"]): r["metrics"] for r in results["accuracy"]}
    assert set(by_backend) == {(b, n) for b in ("torch", "onnxruntime", "onnxruntime-int8", "fp16-estimate")
                               for n in (1, 4)}
    for (backend, batch), metrics in by_backend.items():
        if backend in ("onnxruntime-int8", "fp16-estimate"):  # their cost, bounded: recall@5 within 0.01 of fp32
            for key in ("image_retrieval_recall@5", "text_retrieval_recall@5"):
                assert abs(metrics[key] - by_backend[("onnxruntime", batch)][key]) <= 0.01 + 1e-9, (batch, key)
            continue
        if backend == "onnxruntime":
            assert metrics["image_retrieval_recall@5"] >= 0.9, (batch, metrics)
            assert metrics["text_retrieval_recall@5"] >= 0.9, (batch, metrics)
        for key, value in metrics.items():
            assert abs(value - by_backend[("torch", batch)][key]) <= 0.005, (backend, batch, key)
    assert results["accuracy"][0]["images"] == 100 and results["accuracy"][0]["captions"] == 500


def test_demo_writes_tables_and_results(demo):
    out, results = demo
    for name in ("recall.md", "recall.csv", "throughput_onnxruntime.md", "throughput_torch.csv", "results.json",
                 "accuracy.json", "performance.json", "export.json", "accuracy_vs_torch.md", "report.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["performance"]["throughput"]["onnxruntime"]["4"]["vision"] > 0
    latency = saved["performance"]["latency_ms"]["torch"]["4"]["text"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    e2e = saved["infer"]["onnxruntime"]["4"]["vision"]
    assert 0 < e2e["e2e_fps"] < e2e["compute_fps"]  # reading and writing files costs time
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["commands"]["infer"][0].startswith("python openclip_infer.py --model ")
    table = (out / "throughput_onnxruntime.md").read_text()
    assert "| BatchSize | vision fps | text fps |" in table and table.count("**") == 4  # best of each column
    assert (out / "infer" / "onnxruntime_bs4" / "vision" / "1000_0.npy").is_file()
    assert (out / "infer" / "onnxruntime_bs4" / "text" / "1000_4_0.npy").is_file()
    summary = json.loads((out / "perf" / "torch" / "text_bs4_summary.json").read_text())
    assert summary["NPU_compute_time"]["count"] == 3 and summary["batchsize"] == 4


def test_auto_backend_without_npu_tools_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    backend, reason = resolve_backend("auto")
    assert backend == "onnxruntime" and "npu-smi" in reason and "atc" in reason


def test_shell_steps_take_the_npu_path_with_the_tools_present(demo, tmp_path):
    """With npu-smi, atc and ais_bench (stand-ins) present, BACKEND=auto compiles OMs and runs them;
    recall through the OM path equals the ONNX Runtime path's."""
    out = tmp_path / "run"
    env = {**os.environ, "PATH": f"{FAKES / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{FAKES}{os.pathsep}{ROOT}", "FAKE_NPU_SMI_OUTPUT": str(ROOT / "tests/data/npu_smi/910B4.txt"),
           "OUT": str(out), "BATCH_SIZES": "1,4", "REFERENCE": "0", "PERF_LOOPS": "2", "WORKERS": "2",
           "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "steps" / "run_all.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backend: ascend (npu-smi, atc and ais_bench found)" in result.stdout
    assert sorted(p.name for p in (out / "models").glob("*.om")) == [
        f"openclip_ascend_tiny_{t}_bs{b}.om" for t in ("text", "vision") for b in (1, 4)]
    ascend = {r["batch_size"]: r["metrics"] for r in json.loads((out / "accuracy.json").read_text())}
    onnx = {r["batch_size"]: r["metrics"] for r in demo[1]["accuracy"] if r["backend"] == "onnxruntime"}
    assert ascend == onnx
    assert (out / "throughput_ascend.md").is_file()


def test_accuracy_comparison_and_report(demo):
    out, results = demo
    agreement = {(r["backend"], r["batch_size"]): r.get("agreement") for r in results["accuracy"]}
    assert agreement[("torch", 1)] is None
    fp32, int8 = agreement[("onnxruntime", 4)], agreement[("onnxruntime-int8", 4)]
    assert fp32["vision"]["max_abs_diff"] <= 1e-4 and fp32["text"]["min_cosine"] > 0.99999
    assert 0.99 < int8["vision"]["min_cosine"] < fp32["vision"]["min_cosine"]  # int8 costs something, visibly
    report = (out / "report.md").read_text()
    for needle in ("## Accuracy", "### Against PyTorch", "| onnxruntime-int8 | 4 |", "![throughput against batch size]",
                   "## Published reference (not measured here)", "| 64 | 326 | 4502 |", "## Machine and software",
                   "| onnxruntime |", "## Commands", "python openclip_infer.py --model"):
        assert needle in report, needle


def test_dynamic_batch_mixed_precision_on_two_devices(demo, tmp_path):
    """DYNAMIC_BATCH=1, DEVICES=0,1 and PRECISION=mixed through the shell steps on the stand-in tools."""
    out = tmp_path / "run"
    env = {**os.environ, "PATH": f"{FAKES / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{FAKES}{os.pathsep}{ROOT}", "FAKE_NPU_SMI_OUTPUT": str(ROOT / "tests/data/npu_smi/310P3_two_cards.txt"),
           "OUT": str(out), "BATCH_SIZES": "1,4", "REFERENCE": "0", "PERF_LOOPS": "2", "WORKERS": "2",
           "DYNAMIC_BATCH": "1", "DEVICES": "0,1", "PRECISION": "mixed", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "steps" / "run_all.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (out / "models").glob("*.om")) == [
        "openclip_ascend_tiny_text_dynbs.om", "openclip_ascend_tiny_vision_dynbs.om"]
    assert (out / "models" / "openclip_ascend_tiny_vision_dynbs.keep_dtype.cfg").is_file()
    assert len(list((out / "infer" / "ascend_bs4" / "vision" / "device1").glob("*_0.npy"))) == 50
    ascend = {r["batch_size"]: r["metrics"] for r in json.loads((out / "accuracy.json").read_text())}
    onnx = {r["batch_size"]: r["metrics"] for r in demo[1]["accuracy"] if r["backend"] == "onnxruntime"}
    assert ascend == onnx
    performance = json.loads((out / "performance.json").read_text())
    devices = performance["per_device"]["ascend"]["4"]["vision"]
    assert set(devices) == {"0", "1"}
    assert performance["throughput"]["ascend"]["4"]["vision"] == pytest.approx(sum(devices.values()))
    report = (out / "report.md").read_text()
    assert "### Per device" in report and "--dymBatch 4 --device 0,1" in report


def test_fp16_estimate_rounds_but_stays_close(demo):
    out, results = demo
    estimate = next(r for r in results["accuracy"] if r["backend"] == "fp16-estimate" and r["batch_size"] == 4)
    vision = estimate["agreement"]["vision"]
    assert 1e-6 < vision["max_abs_diff"] < 1e-2 and vision["min_cosine"] > 0.999  # rounded, yet close
    assert "fp16-estimate" not in results["performance"]["throughput"]
    assert "`fp16-estimate` is an estimate, not a measurement" in (out / "report.md").read_text()


def test_accuracy_step_reads_each_embedding_folder_once(demo, monkeypatch):
    import openclip_ascend.postprocess as postprocess
    from openclip_ascend.pipeline import step_accuracy

    out, results = demo
    reads = []
    original = postprocess.read_embedding_dir
    monkeypatch.setattr(postprocess, "read_embedding_dir", lambda folder: reads.append(str(folder)) or original(folder))
    config = RunConfig(out, batch_sizes=(1, 4), backend="onnxruntime", int8=True, fp16_estimate=True)
    again = step_accuracy(config)
    assert len(reads) == len(set(reads)) == 4 * 2 * 2  # backends × batch sizes × towers
    assert [(e["backend"], e["batch_size"]) for e in again] == [(e["backend"], e["batch_size"])
                                                               for e in results["accuracy"]]
    assert again == results["accuracy"]
