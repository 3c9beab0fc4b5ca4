"""End to end on the demo sample with the bundled tiny model: the README's `make demo` path."""

import json

import pytest

from openclip_ascend.models import TINY_MODEL, TINY_WEIGHTS
from openclip_ascend.pipeline import run_pipeline


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_pipeline(out, TINY_MODEL, str(TINY_WEIGHTS), batch_sizes=(1, 4), workers=2)


def test_demo_recall_floor_and_backend_agreement(demo):
    _, results = demo
    by_backend = {(r["backend"], r["batch_size"]): r["metrics"] for r in results["accuracy"]}
    assert set(by_backend) == {("torch", 1), ("torch", 4), ("onnxruntime", 1), ("onnxruntime", 4)}
    for (backend, batch), metrics in by_backend.items():
        if backend == "onnxruntime":
            assert metrics["image_retrieval_recall@5"] >= 0.9, (batch, metrics)
            assert metrics["text_retrieval_recall@5"] >= 0.9, (batch, metrics)
        for key, value in metrics.items():
            assert abs(value - by_backend[("torch", batch)][key]) <= 0.005, (backend, batch, key)
    assert results["accuracy"][0]["images"] == 100 and results["accuracy"][0]["captions"] == 500


def test_demo_writes_tables_and_results(demo):
    out, results = demo
    for name in ("recall.md", "recall.csv", "throughput_onnxruntime.md", "throughput_torch.csv", "results.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text())["throughput"]["onnxruntime"]["4"]["vision"] > 0
    table = (out / "throughput_onnxruntime.md").read_text()
    assert "| BatchSize | vision fps | text fps |" in table and table.count("**") == 4  # best of each column
    assert (out / "infer" / "onnxruntime_bs4" / "vision" / "1000_0.npy").is_file()
    assert (out / "infer" / "onnxruntime_bs4" / "text" / "1000_4_0.npy").is_file()
