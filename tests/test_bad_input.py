"""Catalogue of bad input: each case fails with a message naming the file or value, or survives on purpose."""

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from openclip_ascend.data.dataset import ANNOTATION_FILE, Manifest, read_annotations
from openclip_ascend.data.preprocess import preprocess_dataset
from openclip_ascend.data.sample import write_sample_dir
from openclip_ascend.evaluate.postprocess import evaluate_folders
from openclip_ascend.files import KitError
from openclip_ascend.model.export import onnx_path
from openclip_ascend.model.loading import TINY_MODEL
from openclip_ascend.run.runner import infer
from openclip_ascend.run.sessions import OnnxRuntimeSession

ROOT = Path(__file__).resolve().parents[1]


def jpeg_bytes(size=(60, 40), mode="RGB"):
    buffer = io.BytesIO()
    rng = np.random.default_rng(size[0])
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(buffer, "JPEG")
    return buffer.getvalue()


def make_data(folder, images, captions=None):
    """A data dir: ``images`` maps file name → bytes; every image gets two captions unless given."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    rows = captions if captions is not None else [f"{n},a picture of {n}" for n in images for _ in range(2)]
    (folder / ANNOTATION_FILE).write_text("image,caption\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return folder


def preprocess(folder, out, **kwargs):
    return preprocess_dataset(folder, out, TINY_MODEL, workers=1, **kwargs)


# --- images --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["corrupt", "truncated", "zero-byte"])
def test_unreadable_image_stops_with_its_name_or_is_skipped(tmp_path, bad):
    good = jpeg_bytes()
    data = {"corrupt": b"\xff\xd8 this is not a jpeg" * 10, "truncated": good[: len(good) // 2], "zero-byte": b""}[bad]
    folder = make_data(tmp_path / "d", {"1.jpg": good, "2.jpg": data, "3.jpg": good})
    with pytest.raises(KitError, match=r"2\.jpg: cannot be read as an image.*--on-error skip"):
        preprocess(folder, tmp_path / "stop")
    manifest = preprocess(folder, tmp_path / "skip", on_error="skip")
    assert manifest.images == ["1.jpg", "3.jpg"] and len(manifest.captions) == 4
    assert [Path(s["item"]).name for s in manifest.skipped] == ["2.jpg"]
    saved = Manifest.load(tmp_path / "skip" / "manifest.json")
    assert saved.skipped == manifest.skipped and saved.captions[2].image == 1
    assert not (tmp_path / "skip" / "images" / "2.npy").exists()


def _encode(img, fmt):
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def _valid_images():
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8))
    palette = rgb.convert("P", palette=Image.ADAPTIVE)
    palette.info["transparency"] = 0
    return {
        "png_named.jpg": _encode(rgb, "PNG"),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "gray.jpg": _encode(rgb.convert("L"), "JPEG"),
        "sixteen.png": _encode(Image.fromarray(rng.integers(0, 65535, (50, 70), dtype=np.uint16)), "PNG"),
        "palette_alpha.png": _encode(palette, "PNG"),
        "rgba.png": _encode(rgb.convert("RGBA"), "PNG"),
        "thin.png": _encode(Image.fromarray(rng.integers(0, 256, (4000, 1, 3), dtype=np.uint8)), "PNG"),
    }


def test_valid_unusual_images_are_processed_as_open_clip_does(tmp_path, tiny_model):
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    images = _valid_images()
    folder = make_data(tmp_path / "d", images)
    manifest = preprocess(folder, tmp_path / "out")
    assert manifest.skipped == [] and len(manifest.images) == len(images)
    transform = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(tiny_model)), is_train=False)
    for name, stem in zip(manifest.images, manifest.image_stems):
        with Image.open(folder / name) as img:
            expected = transform(img).numpy()[None]
        assert np.array_equal(np.load(tmp_path / "out" / "images" / f"{stem}.npy"), expected), name


def test_decompression_bomb_is_named(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 60×40 = 2400 px > 2 × limit
    folder = make_data(tmp_path / "d", {"big.jpg": jpeg_bytes()})
    with pytest.raises(KitError, match=r"big\.jpg: larger than Pillow's decompression-bomb limit"):
        preprocess(folder, tmp_path / "out")
    # the export's --image tracing input is read as step 1 reads its images
    from openclip_ascend.data.preprocess import given_examples
    from openclip_ascend.model.loading import TINY_MODEL

    with pytest.raises(KitError, match=r"--image .*big\.jpg: larger than Pillow's decompression-bomb limit .*; pass"):
        given_examples(tiny_model, TINY_MODEL, image=folder / "big.jpg")


def test_missing_image_stop_and_skip(tmp_path):
    folder = make_data(tmp_path / "d", {"1.jpg": jpeg_bytes()}, ["1.jpg,one", "2.jpg,two", "1.jpg,uno"])
    with pytest.raises(KitError, match=r"2\.jpg: named in flickr30k_test_karpathy\.txt but not found"):
        preprocess(folder, tmp_path / "stop")
    manifest = preprocess(folder, tmp_path / "skip", on_error="skip")
    assert manifest.images == ["1.jpg"] and [c.text for c in manifest.captions] == ["one", "uno"]


def test_images_no_caption_mentions_are_ignored_and_counted(tmp_path):
    folder = make_data(tmp_path / "d", {"1.jpg": jpeg_bytes(), "extra.jpg": jpeg_bytes(), "x.png": b""},
                       ["1.jpg,one"])
    manifest = preprocess(folder, tmp_path / "out")
    assert manifest.images == ["1.jpg"] and manifest.unreferenced_images == 2
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["1.npy"]


# --- annotations ---------------------------------------------------------------------------------

def write_annotations(tmp_path, data):
    path = tmp_path / ANNOTATION_FILE
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("content", [b"1.jpg,a caption\n", b"file,text\n1.jpg,a caption\n", b""])
def test_missing_or_other_header(tmp_path, content):
    with pytest.raises(KitError, match="first line must be the header 'image,caption'.*restore the header"):
        read_annotations(write_annotations(tmp_path, content))


def test_bom_and_windows_line_endings_read_like_the_clean_file(tmp_path):
    clean = 'image,caption\n1.jpg,"a dog, running"\n1.jpg,"say ""hi"""\n2.jpg,two\n'
    expected = read_annotations(write_annotations(tmp_path, clean.encode()))
    spreadsheet = b"\xef\xbb\xbf" + clean.replace("\n", "\r\n").encode()
    got = read_annotations(write_annotations(tmp_path, spreadsheet))
    assert got.captions == expected.captions and got.images == expected.images
    assert got.captions[1].text == 'say "hi"'


@pytest.mark.parametrize("line,message", [("2.jpg,", "empty caption for 2.jpg"),
                                          ("2.jpg", "expected 2 fields"),
                                          ("2.jpg,a,b", "expected 2 fields")])
def test_bad_caption_lines(tmp_path, line, message):
    path = write_annotations(tmp_path, f"image,caption\n1.jpg,one\n{line}\n1.jpg,uno\n".encode())
    with pytest.raises(KitError, match=rf"{ANNOTATION_FILE}:3: {message}"):
        read_annotations(path)
    from openclip_ascend.data.dataset import Problems

    problems = Problems("skip")
    manifest = read_annotations(path, problems)
    assert [c.text for c in manifest.captions] == ["one", "uno"] and problems.skipped[0]["item"].endswith(":3")


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write_annotations(tmp_path, "image,caption\n1.jpg,one\n1.jpg,caf\xe9 latin-1\n".encode("latin-1"))
    with pytest.raises(KitError, match=rf"{ANNOTATION_FILE}:3: bytes that are not UTF-8.*re-save the file as UTF-8"):
        read_annotations(path)
    from openclip_ascend.data.dataset import Problems

    manifest = read_annotations(path, Problems("skip"))
    assert [c.text for c in manifest.captions] == ["one"]


def test_any_number_of_captions_per_image(tmp_path):
    rows = "".join(f"1.jpg,c{k}\n" for k in range(7)) + "2.jpg,only\n"
    manifest = read_annotations(write_annotations(tmp_path, ("image,caption\n" + rows).encode()))
    assert [c.stem for c in manifest.captions][-2:] == ["1_6", "2_0"]


# --- arrays --------------------------------------------------------------------------------------

@pytest.mark.parametrize("tower,array,expected", [
    ("text", np.zeros((1, 77), dtype=np.int32), r"int32 \(1, 77\).*int64 B×77"),
    ("vision", np.zeros((1, 3, 336, 336), dtype=np.float32), r"float32 \(1, 3, 336, 336\).*float32 B×3×224×224"),
])
def test_wrong_arrays_are_named_before_running(tiny_onnx, tmp_path, tower, array, expected):
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "sample.npy", array)
    with pytest.raises(KitError, match=rf"sample\.npy: array is {expected}"):
        infer(OnnxRuntimeSession(onnx_path(tiny_onnx, tower)), input=str(folder), output=str(tmp_path / "o"),
              output_dirname="x", outfmt="NPY")
    assert not (tmp_path / "o" / "x").exists()


def test_folder_mixing_npy_and_other_files(tiny_onnx, prep_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for source in sorted((prep_dir / "texts").glob("*.npy"))[:3]:
        (folder / source.name).write_bytes(source.read_bytes())
    (folder / "notes.txt").write_text("not an input")
    (folder / "sumary.json").write_text("{}")
    infer(OnnxRuntimeSession(onnx_path(tiny_onnx, "text")), input=str(folder), output=str(tmp_path / "o"),
          output_dirname="t", outfmt="NPY")
    assert len(list((tmp_path / "o" / "t").iterdir())) == 3


# --- embeddings ----------------------------------------------------------------------------------

def embedding_dirs(tmp_path, n_images=3):
    vision, text = tmp_path / "vision", tmp_path / "text"
    vision.mkdir()
    text.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_images):
        np.save(vision / f"{i}_0.npy", rng.standard_normal((1, 8)).astype(np.float32))
        np.save(text / f"{i}_0_0.npy", rng.standard_normal((1, 8)).astype(np.float32))
    return vision, text


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_embeddings_are_refused(tmp_path, value):
    vision, text = embedding_dirs(tmp_path)
    bad = np.load(text / "1_0_0.npy")
    bad[0, 3] = value
    np.save(text / "1_0_0.npy", bad)
    with pytest.raises(KitError, match=r"1 text outputs hold NaN or Inf \(first: 1_0_0\)"):
        evaluate_folders(vision, text)


def test_empty_folder_is_refused(tmp_path):
    vision, _ = embedding_dirs(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KitError, match="no ais_bench outputs"):
        evaluate_folders(vision, tmp_path / "empty")


def test_extra_outputs_are_ignored_and_counted(prep_dir, tiny_onnx, tmp_path):
    for tower, folder in (("vision", "images"), ("text", "texts")):
        infer(OnnxRuntimeSession(onnx_path(tiny_onnx, tower)), input=str(prep_dir / folder), output=str(tmp_path),
              output_dirname=tower, outfmt="NPY")
    np.save(tmp_path / "vision" / "stray_0.npy", np.ones((1, 64), dtype=np.float32))
    metrics, counts = evaluate_folders(tmp_path / "vision", tmp_path / "text", prep_dir / "manifest.json")
    assert counts["extra_outputs_ignored"] == 1 and counts["images"] == 10


# --- models --------------------------------------------------------------------------------------

def test_non_onnx_file_is_named(tmp_path):
    """By the kit's sessions and by the export's own checks (a stale text graph beside a vision-only export)."""
    from openclip_ascend.model.export import onnx_runtime

    path = tmp_path / "model.onnx"
    path.write_text("not a model")
    for load in (OnnxRuntimeSession, onnx_runtime):
        with pytest.raises(KitError, match=r"model\.onnx: ONNX Runtime cannot load this model"):
            load(path)


def test_onnx_with_two_outputs_is_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["image_embed"]), helper.make_node("Identity", ["image"], ["scale"])],
        "two", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("image_embed", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "two.onnx")
    with pytest.raises(KitError, match=r"two\.onnx: expected one input and one output.*'scale'.*re-export"):
        OnnxRuntimeSession(tmp_path / "two.onnx")


# --- interrupted runs ------------------------------------------------------------------------------

def test_interrupted_preprocess_resumes_to_the_same_bytes(tmp_path):
    data = write_sample_dir(tmp_path / "data", count=150, seed=3)  # stopped after 20: 130 left, over a second
    command = [sys.executable, str(ROOT / "openclip_preprocess.py"), "--data-dir", str(data), "--model-name",
               TINY_MODEL, "--workers", "1", "--save-dir"]
    subprocess.run(command + [str(tmp_path / "whole")], check=True, capture_output=True)

    partial = tmp_path / "partial"
    process = subprocess.Popen(command + [str(partial)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    def written_so_far():
        return len(list((partial / "images").glob("*.npy"))) if (partial / "images").is_dir() else 0

    deadline = time.time() + 120
    while time.time() < deadline and written_so_far() < 20 and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()[-500:]
    written = list((partial / "images").glob("*.npy"))
    assert 20 <= len(written) < 150 and not (partial / "manifest.json").exists()
    assert not list(partial.rglob("*.tmp"))  # nothing half-written left behind
    for path in written:
        assert np.load(path).shape == (1, 3, 224, 224)

    resumed = subprocess.run(command + [str(partial)], capture_output=True, text=True, check=True)
    assert json.loads(resumed.stdout)["images"] == 150
    whole = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*") if p.is_file())
    assert whole == sorted(p.relative_to(partial) for p in partial.rglob("*") if p.is_file())
    for relative in whole:
        assert (partial / relative).read_bytes() == (tmp_path / "whole" / relative).read_bytes(), relative


def test_force_redoes_and_default_keeps(tmp_path):
    folder = make_data(tmp_path / "d", {"1.jpg": jpeg_bytes()})
    preprocess(folder, tmp_path / "out")
    target = tmp_path / "out" / "images" / "1.npy"
    stamp = target.stat().st_mtime_ns
    preprocess(folder, tmp_path / "out")
    assert target.stat().st_mtime_ns == stamp
    preprocess(folder, tmp_path / "out", force=True)
    assert target.stat().st_mtime_ns != stamp


def test_error_exit_code_and_one_line_first(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "openclip_preprocess.py"), "--data-dir", str(tmp_path),
                             "--save-dir", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and ANNOTATION_FILE in result.stderr.splitlines()[0]


@pytest.mark.parametrize("on_error", ["stop", "skip"])
@pytest.mark.parametrize("names", [("2000.jpg", "2000.png"), ("3000.v1.jpg", "3000.v2.jpg")])
def test_two_images_with_one_stem_stop_before_anything_is_written(tmp_path, names, on_error):
    folder = make_data(tmp_path / "d", {"1.jpg": jpeg_bytes(), names[0]: jpeg_bytes((50, 30)), names[1]: jpeg_bytes()})
    stem = names[0].split(".")[0]
    with pytest.raises(KitError, match=rf"{names[0]} and .*{names[1]}: both would become images/{stem}\.npy"):
        preprocess(folder, tmp_path / "out", on_error=on_error)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.npy"))


def test_two_inputs_with_one_output_name_are_refused(tiny_onnx, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.v1.npy", "a.v2.npy"):
        np.save(folder / name, np.zeros((1, 77), dtype=np.int64))
    with pytest.raises(KitError, match=r"a\.v1\.npy and .*a\.v2\.npy: both would write the output a_0"):
        infer(OnnxRuntimeSession(onnx_path(tiny_onnx, "text")), input=str(folder), output=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_repeated_batch_size_is_refused():
    from openclip_ascend.cli import csv_ints

    with pytest.raises(KitError, match=r"'1,4,4': 4 appears twice"):
        csv_ints("1,4,4")


WORKER_STOP = """
import signal, time
from openclip_ascend import cli
from openclip_ascend.data.preprocess import worker_pool
from openclip_ascend.data.transforms import PreprocessConfig

signal.signal(signal.SIGTERM, cli._terminate)  # what every script installs through cli.run
pool = worker_pool(2, PreprocessConfig(size=(8, 8), mean=(0.5,) * 3, std=(0.5,) * 3))
pool.map(time.sleep, [0.01, 0.01])  # the workers are up and initialised
pool.map_async(time.sleep, [5, 5], chunksize=1)
time.sleep(0.5)  # both workers busy
workers = list(pool._pool)
pool.terminate()  # what an interrupted run does: SIGTERM to every worker
pool.join()
print([worker.exitcode for worker in workers])
"""


def test_pool_workers_stop_quietly_on_sigterm():
    """The CLI's SIGTERM handler must not reach the forked workers: leaving the pool ends them with
    SIGTERM, and with the parent's handler a worker printed a KeyboardInterrupt traceback."""
    result = subprocess.run([sys.executable, "-c", WORKER_STOP], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == str([-signal.SIGTERM] * 2), result.stderr
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr


def test_successful_runs_with_workers_print_no_traceback(tmp_path):
    data = write_sample_dir(tmp_path / "data", count=20, seed=4)
    for run in range(2):
        result = subprocess.run([sys.executable, str(ROOT / "openclip_preprocess.py"), "--data-dir", str(data),
                                 "--save-dir", str(tmp_path / f"out{run}"), "--model-name", TINY_MODEL,
                                 "--workers", "2"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-1000:]
        assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr[-1000:]


def test_interrupted_run_with_workers_leaves_nothing_half_written(tmp_path):
    data = write_sample_dir(tmp_path / "data", count=300, seed=5)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(ROOT / "openclip_preprocess.py"), "--data-dir", str(data),
                                "--save-dir", str(out), "--model-name", TINY_MODEL, "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and (
            not (out / "images").is_dir() or len(list((out / "images").glob("*.npy"))) < 10):
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()[-500:]
    assert "Traceback" not in stderr.decode()
    assert not list(out.rglob("*.tmp")) and not (out / "manifest.json").exists()
    for path in (out / "images").glob("*.npy"):
        assert np.load(path).shape == (1, 3, 224, 224)


@pytest.mark.parametrize("steps,message", [("1-3,9", "step 9: the steps are 1–7"),
                                           ("1-x", "--steps 1-x: write step numbers and ranges")])
def test_bad_steps_are_one_line_before_anything_runs(tmp_path, steps, message):
    result = subprocess.run([sys.executable, str(ROOT / "openclip_pipeline.py"), "--output-dir", str(tmp_path / "run"),
                             "--steps", steps], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "run").exists()


def test_on_error_skip_reaches_the_pipeline_and_an_empty_set_is_an_error(tmp_path):
    """ON_ERROR / --on-error in the pipeline (an error used to suggest a flag it did not take); with every image
    unusable, preprocessing used to write an empty set and exit 0."""
    from openclip_ascend.pipeline import RunConfig, run_steps

    good = jpeg_bytes()
    folder = make_data(tmp_path / "d", {"1.jpg": good, "2.jpg": b"not an image", "3.jpg": good})
    with pytest.raises(KitError, match=r"2\.jpg: cannot be read as an image.*ON_ERROR=skip"):
        run_steps(RunConfig(tmp_path / "stop", data_dir=folder, workers=1, pretrained="none"), [1])
    results = run_steps(RunConfig(tmp_path / "skip", data_dir=folder, workers=1, pretrained="none", on_error="skip"),
                        [1])
    assert results["preprocess"]["retrieval"] == {"dataset": "flickr30k", "images": 2, "captions": 4, "skipped": 1}
    assert results["commands"]["preprocess"][0].endswith("--on-error skip")
    with pytest.raises(KitError, match="annotation file not found"):  # a layout problem: before anything is written
        run_steps(RunConfig(tmp_path / "nothing", data_dir=tmp_path, workers=1, pretrained="none"), [1])
    assert not (tmp_path / "nothing").exists()
    broken = make_data(tmp_path / "broken", {"1.jpg": b"x", "2.jpg": b"y"})
    with pytest.raises(KitError, match=r"broken: no image left to evaluate \(2 items skipped"):
        run_steps(RunConfig(tmp_path / "empty", data_dir=broken, workers=1, pretrained="none", on_error="skip"), [1])
    assert not (tmp_path / "empty" / "prep" / "manifest.json").exists()


def test_empty_class_folders_are_named_and_hidden_folders_ignored(tmp_path):
    from openclip_ascend.evaluate.zeroshot import read_image_folder

    for folder in ("red", "blue", "grey", ".ipynb_checkpoints"):
        (tmp_path / folder).mkdir()
    for folder in ("red", "blue"):
        (tmp_path / folder / "a.jpg").write_bytes(jpeg_bytes())
    with pytest.raises(KitError, match=r"class folders without images: grey; put images in them"):
        read_image_folder(tmp_path)
    (tmp_path / "grey" / "b.jpg").write_bytes(jpeg_bytes())
    folders, files, labels = read_image_folder(tmp_path)
    assert folders == ["blue", "grey", "red"] and labels == [0, 1, 2]  # the hidden folder is no class
