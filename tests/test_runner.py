"""Inference in ais_bench's layout: names, padding, summary JSON and the throughput line."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from openclip_ascend.backends import OnnxRuntimeSession, TorchSession, open_session
from openclip_ascend.export import onnx_path
from openclip_ascend.files import KitError
from openclip_ascend.models import TINY_MODEL, TINY_WEIGHTS
from openclip_ascend.runner import infer

# every wording of ais_bench's throughput line (ascend-tools reference), parsed the way the kit will parse it
THROUGHPUT = re.compile(r"\[INFO\] throughput 1000\*batchsize(?:\.mean)?\(([\d.]+)\)/"
                        r"NPU_compute_time\.mean\(([\d.]+)\): ([\d.]+)", re.IGNORECASE)


class RecordingSession:
    """Wraps a session and records every batch it was given."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []
        self.name, self.input_name, self.output_name = inner.name, inner.input_name, inner.output_name
        self.input_shape, self.input_dtype = inner.input_shape, inner.input_dtype

    def run(self, batch):
        self.batches.append(batch.copy())
        return self.inner.run(batch)


@pytest.fixture()
def ten_images(prep_dir, tmp_path):
    """10 image files named so that natural order differs from lexical order (img2 < img10)."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    sources = sorted((prep_dir / "images").glob("*.npy"))
    for i, source in enumerate(sources):
        (folder / f"img{i}.npy").write_bytes(source.read_bytes())
    return folder


def test_ten_files_at_batch_four(tiny_onnx, ten_images, tmp_path):
    session = RecordingSession(OnnxRuntimeSession(onnx_path(tiny_onnx, "vision")))
    summary = infer(session, input=str(ten_images), output=str(tmp_path / "out"), output_dirname="vision",
                    outfmt="NPY", batchsize=4, warmup_count=1)
    outputs = sorted(p.name for p in (tmp_path / "out" / "vision").iterdir())
    assert outputs == sorted(f"img{i}_0.npy" for i in range(10))  # padding never saved
    assert len(session.batches) == 1 + 3 and all(b.shape == (4, 3, 224, 224) for b in session.batches)
    last = session.batches[-1]
    img8, img9 = np.load(ten_images / "img8.npy")[0], np.load(ten_images / "img9.npy")[0]
    assert np.array_equal(last[0], img8) and np.array_equal(last[1], img9)
    assert np.array_equal(last[2], img8) and np.array_equal(last[3], img8)  # padded with the batch's first file
    # natural sort: the second batch holds img4..img7
    assert np.array_equal(session.batches[2][0], np.load(ten_images / "img4.npy")[0])
    reference = OnnxRuntimeSession(onnx_path(tiny_onnx, "vision"))
    for i in range(10):
        single = reference.run(np.load(ten_images / f"img{i}.npy"))
        assert np.allclose(np.load(tmp_path / "out" / "vision" / f"img{i}_0.npy"), single, atol=1e-5)

    saved = json.loads((tmp_path / "out" / "vision_summary.json").read_text())
    assert saved["NPU_compute_time"]["count"] == 3
    assert set(saved["NPU_compute_time"]) == {"min", "max", "mean", "median", "percentile(99%)", "count"}
    assert {"H2D_latency", "D2H_latency", "throughput", "filesinfo", "args"} <= set(saved)
    assert saved["throughput"] == pytest.approx(1000 * 4 / saved["NPU_compute_time"]["mean"])
    assert saved["filesinfo"]["2"]["infiles"][-1].endswith("img9.npy") and len(saved["filesinfo"]["2"]["outfiles"]) == 2
    assert summary["throughput"] == saved["throughput"]


def test_pure_inference_loop(tiny_onnx, capsys, tmp_path):
    session = OnnxRuntimeSession(onnx_path(tiny_onnx, "text"))
    summary = infer(session, loop=5, batchsize=3, output=str(tmp_path), output_dirname="pure")
    assert summary["NPU_compute_time"]["count"] == 5 and summary["batchsize"] == 3
    assert not (tmp_path / "pure").exists() and (tmp_path / "pure_summary.json").is_file()
    match = THROUGHPUT.search(capsys.readouterr().out)
    assert match and float(match.group(1)) == 3
    assert float(match.group(3)) == pytest.approx(1000 * 3 / float(match.group(2)))


def test_wrong_input_array_is_named_before_running(tiny_onnx, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    np.save(folder / "x.npy", np.zeros((1, 3, 224, 224), dtype=np.float64))
    session = RecordingSession(OnnxRuntimeSession(onnx_path(tiny_onnx, "vision")))
    with pytest.raises(KitError, match=r"x\.npy.*float64.*float32"):
        infer(session, input=str(folder), output=str(tmp_path / "o"), output_dirname="v", outfmt="NPY")
    assert session.batches == []


def test_missing_om_model_is_named(tmp_path):
    with pytest.raises(KitError, match=r"model\.om: OM model not found.*convert/onnx2om\.py"):
        open_session("auto", str(tmp_path / "model.om"))


def test_torch_backend_writes_the_same_layout(tiny_onnx, prep_dir, tmp_path):
    torch_session = TorchSession(TINY_MODEL, str(TINY_WEIGHTS), "text")
    onnx_session = OnnxRuntimeSession(onnx_path(tiny_onnx, "text"))
    for session in (torch_session, onnx_session):
        infer(session, input=str(prep_dir / "texts"), output=str(tmp_path / session.name), output_dirname="text",
              outfmt="NPY", batchsize=8)
    names = sorted(p.name for p in (tmp_path / "torch" / "text").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "onnxruntime" / "text").iterdir()) and len(names) == 50
    for name in names:
        a, b = np.load(tmp_path / "torch" / "text" / name), np.load(tmp_path / "onnxruntime" / "text" / name)
        assert a.shape == (1, 64) and np.abs(a - b).max() <= 1e-4


def test_infer_cli_prints_ais_bench_line(tiny_onnx, prep_dir, tmp_path):
    result = subprocess.run([sys.executable, "openclip_infer.py", "--model", str(onnx_path(tiny_onnx, "vision")),
                             "--input", str(prep_dir / "images"), "--output", str(tmp_path), "--output_dirname", "v",
                             "--outfmt", "BIN", "--batchsize", "4"], capture_output=True, text=True, check=True)
    assert THROUGHPUT.search(result.stdout)
    bins = sorted((tmp_path / "v").glob("*_0.bin"))
    assert len(bins) == 10 and np.fromfile(bins[0], dtype=np.float32).shape == (64,)


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "openclip_infer.py", "--model", str(tmp_path / "missing.onnx")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing.onnx" in result.stderr
