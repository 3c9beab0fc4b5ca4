"""Inference in ais_bench's layout: names, padding, summary JSON and the throughput line."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from openclip_ascend.files import KitError
from openclip_ascend.model.export import onnx_path
from openclip_ascend.model.loading import TINY_MODEL, TINY_WEIGHTS
from openclip_ascend.run.runner import infer
from openclip_ascend.run.sessions import OnnxRuntimeSession, TorchSession, open_session

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
    # ais_bench's filesinfo: one entry per input file, sample id = batch index × files per batch + j
    assert sorted(saved["filesinfo"], key=int) == [str(i) for i in range(10)]
    assert saved["filesinfo"]["9"] == {"infiles": [str(ten_images / "img9.npy")],
                                       "outfiles": [str(tmp_path / "out" / "vision" / "img9_0.npy")]}
    assert isinstance(saved["args"], list)  # the command line, as sys.argv
    assert summary["throughput"] == saved["throughput"]


def test_pure_inference_loop(tiny_onnx, capsys, tmp_path):
    session = OnnxRuntimeSession(onnx_path(tiny_onnx, "text"))
    summary = infer(session, loop=5, batchsize=3, output=str(tmp_path), output_dirname="pure")
    assert summary["NPU_compute_time"]["count"] == 5 and summary["batchsize"] == 3
    assert (tmp_path / "pure_summary.json").is_file()
    assert sorted(p.name for p in (tmp_path / "pure").iterdir()) == ["pure_infer_data_0.bin"]  # as ais_bench saves it
    assert np.fromfile(tmp_path / "pure" / "pure_infer_data_0.bin", dtype=np.float32).size == 3 * 64
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


def test_txt_outputs_are_written_as_ais_bench_writes_them(tiny_onnx, ten_images, tmp_path):
    session = OnnxRuntimeSession(onnx_path(tiny_onnx, "vision"))
    infer(session, input=str(ten_images / "img3.npy"), output=str(tmp_path), output_dirname="t", outfmt="TXT")
    text = (tmp_path / "t" / "img3_0.txt").read_text()
    values = text.split("\n")[0].split(" ")
    assert text.endswith(" \n") and text.count("\n") == 1  # one row of the last axis, a space before the newline
    assert len(values) == 65 and values[-1] == "" and all(len(v.split(".")[1]) == 6 for v in values[:-1])  # %f
    assert np.allclose(np.loadtxt(tmp_path / "t" / "img3_0.txt"), session.run(np.load(ten_images / "img3.npy"))[0],
                       atol=1e-6)


def test_bin_inputs_take_the_models_dtype(tiny_onnx, ten_images, tmp_path):
    folder = tmp_path / "bins"
    folder.mkdir()
    for i, suffix in ((1, ".bin"), (2, ".BIN"), (3, ".NPY")):
        array = np.load(ten_images / f"img{i}.npy")
        if suffix == ".NPY":
            np.save(folder / f"img{i}.npy", array)
            (folder / f"img{i}.npy").rename(folder / f"img{i}{suffix}")
        else:
            array.tofile(folder / f"img{i}{suffix}")
    session = OnnxRuntimeSession(onnx_path(tiny_onnx, "vision"))
    infer(session, input=str(folder), output=str(tmp_path), output_dirname="b", outfmt="NPY", batchsize=2)
    for i in (1, 2, 3):
        expected = session.run(np.load(ten_images / f"img{i}.npy"))
        assert np.allclose(np.load(tmp_path / "b" / f"img{i}_0.npy"), expected, atol=1e-5)
    (folder / "img1.bin").write_bytes(b"\0" * 12)
    with pytest.raises(KitError, match=r"img1\.bin: 12 bytes are not whole samples"):
        infer(session, input=str(folder), output=str(tmp_path), output_dirname="c")


def test_split_among_devices_is_ais_bench_s():
    from openclip_ascend.run.runner import split_among_devices

    assert [len(share) for share in split_among_devices(list(range(10)), [0, 1, 2])] == [4, 4, 2]
    assert split_among_devices(list(range(4)), [3, 5]) == [[0, 1], [2, 3]]


# Run times (ms) on each side of both rules of the noisy flag: CV > 10 %, or p99 > 2× the median.
# A tail past 2× the median with a CV under 10 % takes thousands of runs: at least 1 % of them must be
# that slow, and their spread alone then nears 10 %, so the bulk sits at two close levels that raise
# the mean more than the spread.
SPREADS = {
    "steady (CV 9 %, p99 1.09x the median)": (np.tile([9.1, 10.9], 10), False),
    "varying (CV 11 %, p99 1.11x the median)": (np.tile([8.9, 11.1], 10), True),
    "a tail short of 2x (CV 8.8 %, p99 1.9x the median)": (np.repeat([10.0, 10.4, 19.0], [5001, 4898, 101]), False),
    "a tail past 2x (CV 9.9 %, p99 2.02x the median)": (np.repeat([10.0, 10.4, 20.2], [5001, 4898, 101]), True),
}


@pytest.mark.parametrize("case", SPREADS)
def test_spread_marks_runs_that_vary_too_much(case):
    from openclip_ascend.run.runner import spread

    times, noisy = SPREADS[case]
    cv, tail = np.std(times) / np.mean(times), np.percentile(times, 99) / np.median(times)
    assert (cv > 0.10, tail > 2.0) in ((True, False), (False, True), (False, False))  # one rule at a time
    result = spread(times)
    assert result["cv"] == pytest.approx(cv) and result["p99_over_median"] == pytest.approx(tail)
    assert result["noisy"] is noisy


def test_spread_of_one_run_or_one_slow_run_in_twenty():
    from openclip_ascend.run.runner import spread

    assert not spread([7.0])["noisy"]
    tail = spread([10.0] * 19 + [25.0])  # one run in twenty slowed by other load
    assert tail["noisy"] and tail["p99_over_median"] > 2


def test_pass_through_reads_each_devices_summary(tmp_path, capsys):
    """`ais_bench --device 0,2` writes one ordinary summary per device, O/D/device{N}_summary.json, and none
    at O/D_summary.json (ascend-tools reference); the pass-through returns each device's under its number
    — not a single-device summary an earlier run left beside the folder — and the summed throughput."""
    from openclip_ascend.ascend import aisbench

    out = tmp_path / "o"
    (out / "d").mkdir(parents=True)
    (out / "d_summary.json").write_text(json.dumps({"throughput": 1.0}))  # an earlier run on one device
    per_device = {0: {"throughput": 101.5, "NPU_compute_time": {"mean": 39.41, "count": 3}},
                  2: {"throughput": 98.25, "NPU_compute_time": {"mean": 40.71, "count": 2}}}
    for device, summary in per_device.items():
        (out / "d" / f"device{device}_summary.json").write_text(json.dumps(summary))
    printed = [f"[INFO] throughput 1000*batchsize.mean(4)/NPU_compute_time.mean({s['NPU_compute_time']['mean']}): "
               f"{s['throughput']}" for s in per_device.values()]
    printed += [f"i:{i} device_{d} throughput:{s['throughput']} start_time:1.0 end_time:2.0"
                for i, (d, s) in enumerate(per_device.items())] + ["[INFO] summary throughput:199.75"]
    tool = [sys.executable, "-c", f"print({chr(10).join(printed)!r})", "--model", "m.om"]  # ais_bench's stdout
    result = aisbench.run(tool, str(out), "d", devices=[0, 2])
    assert result["summaries"] == {"0": per_device[0], "2": per_device[2]}
    assert result["throughput"] == 199.75 and [line["throughput"] for line in result["lines"]] == [101.5, 98.25]
    assert capsys.readouterr().out.splitlines()[-1] == "[INFO] summary throughput:199.75"  # echoed
