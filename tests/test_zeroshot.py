"""Zero-shot classification: CLIP_benchmark's own classifier and metrics on the same embeddings, the
generated colour set through ONNX Runtime and the stand-in OM path, CLIP_benchmark's result file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from openclip_ascend.data.sample import (
    CLASSIFICATION_TEMPLATES,
    CLASSIFICATION_TEMPLATES_FILE,
    COLORS,
    write_classification_dir,
)
from openclip_ascend.evaluate.zeroshot import builtin, classifier, classify, load_set, prompts, run_zeroshot
from openclip_ascend.files import KitError
from openclip_ascend.model.loading import TINY_MODEL, TINY_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = list(CLASSIFICATION_TEMPLATES)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    root = write_classification_dir(tmp_path_factory.mktemp("colours") / "data", count=80)
    return root, root / CLASSIFICATION_TEMPLATES_FILE


def test_metrics_and_classifier_equal_clip_benchmark(tiny_model, colours):
    """The same text embeddings through CLIP_benchmark's zero_shot_classifier, accuracy and
    balanced accuracy give what the kit gives."""
    zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    from sklearn.metrics import balanced_accuracy_score

    from openclip_ascend.data.transforms import Tokenizer

    names = sorted(COLORS)
    expected = zsc.zero_shot_classifier(tiny_model, lambda texts: torch.from_numpy(Tokenizer(TINY_MODEL)(texts)), names,
                                        TEMPLATES, "cpu", amp=False).T.numpy()
    with torch.no_grad():
        text = tiny_model.encode_text(torch.from_numpy(Tokenizer(TINY_MODEL)(prompts(names, TEMPLATES)))).numpy()
    weights = classifier(text, len(names), len(TEMPLATES))
    assert np.abs(weights - expected).max() <= 1e-6
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((200, 64)).astype(np.float32), rng.integers(0, len(names), 200)
    metrics, tied = classify(images, weights, labels)
    logits = torch.from_numpy(images / np.linalg.norm(images, axis=1, keepdims=True) @ weights.T)
    try:
        acc1, acc5 = zsc.accuracy(logits, torch.from_numpy(labels), topk=(1, 5))
    except TypeError:  # CLIP_benchmark 1.6.2 calls float() on a 1-element array, which NumPy 2.x refuses: its formula
        pred = logits.topk(5, 1, True, True)[1].t()
        correct = pred.eq(torch.from_numpy(labels).view(1, -1).expand_as(pred))
        acc1, acc5 = (float(correct[:k].reshape(-1).float().sum()) / len(labels) for k in (1, 5))
    assert tied == 0 and metrics["acc1"] == acc1 and metrics["acc5"] == acc5
    assert metrics["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(labels, logits.argmax(1).numpy()),
                                                             abs=1e-12)


def test_ties_count_against_the_true_class():
    weights = np.eye(3, dtype=np.float32)
    images = np.array([[1, 1, 0], [0, 0, 1]], dtype=np.float32)  # image 0 ties classes 0 and 1
    metrics, tied = classify(images, weights, [0, 2])
    assert tied == 1 and metrics["acc1"] == 0.5 and np.isnan(metrics["acc5"])  # 3 classes: no acc5, as CLIP_benchmark


def test_colour_set_far_above_chance_through_onnx_runtime_and_torch(colours, tmp_path):
    root, templates = colours
    data = load_set(root, templates_file=templates)
    assert data.classnames == sorted(COLORS) and len(data.files) == 80
    results = {}
    for backend in ("onnxruntime", "torch"):
        results[backend] = run_zeroshot(data, "colours", TINY_MODEL, str(TINY_WEIGHTS), backend, tmp_path / backend,
                                        tmp_path / f"{backend}.json", batch_size=4)
    ort = results["onnxruntime"]["metrics"]
    assert ort["acc1"] >= 0.6 and ort["acc5"] >= ort["acc1"] and ort["mean_per_class_recall"] >= 0.5  # chance 0.125
    assert abs(ort["acc1"] - results["torch"]["metrics"]["acc1"]) <= 2 / 80  # near-ties may flip, nothing more
    saved = json.loads((tmp_path / "onnxruntime.json").read_text())
    assert {"dataset", "model", "pretrained", "task", "metrics"} <= set(saved)
    assert saved["task"] == "zeroshot_classification" and set(saved["metrics"]) == {"acc1", "acc5",
                                                                                    "mean_per_class_recall"}
    assert (tmp_path / "onnxruntime" / "models" / "openclip_ascend_tiny_text_dynlen.onnx").is_file()


def test_cli_through_the_stand_in_om_path(colours, tmp_path, tiny_onnx):
    """--backend ascend: the OMs convert/onnx2om.py compiled (stand-in atc and aclruntime)."""
    import os

    root, templates = colours
    fakes = ROOT / "tests" / "fakes"
    env = {**os.environ, "PATH": f"{fakes / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{fakes}{os.pathsep}{ROOT}", "FAKE_NPU_SMI_OUTPUT": str(ROOT / "tests/data/npu_smi/910B4.txt")}
    subprocess.run([sys.executable, str(ROOT / "convert" / "onnx2om.py"), "--onnx-prefix", str(tiny_onnx),
                    "--batch-sizes", "4", "--output-dir", str(tmp_path / "om")], check=True, capture_output=True, env=env)
    result = subprocess.run([sys.executable, str(ROOT / "openclip_zeroshot.py"), "--data-dir", str(root), "--templates",
                             str(templates), "--model-name", TINY_MODEL, "--backend", "ascend", "--om-prefix",
                             str(tmp_path / "om" / "tiny"), "--batch-size", "4", "--output-dir", str(tmp_path / "run"),
                             "--results-file", str(tmp_path / "r.json")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "zero-shot" in result.stdout and json.loads((tmp_path / "r.json").read_text())["metrics"]["acc1"] >= 0.6


def test_builtin_sets_and_bad_input(colours, tmp_path):
    names, templates = builtin("imagenet1k")
    assert len(names) == 1000 and len(templates) == 80 and all("{c}" in t for t in templates)
    assert len(builtin("cifar100")[0]) == 100 and len(builtin("cifar10")[0]) == 10
    root, _ = colours
    with pytest.raises(KitError, match="10 class names for 8 class folders"):
        load_set(root, dataset="cifar10")
    bad = tmp_path / "t.txt"
    bad.write_text("a photo\n")
    with pytest.raises(KitError, match="has no {c}"):
        load_set(root, templates_file=bad)
    with pytest.raises(KitError, match="no class folders with images"):
        load_set(tmp_path)


def test_pipeline_task_zeroshot_takes_data_dir_as_the_classes(colours, tmp_path):
    """TASK=zeroshot DATA_DIR=ROOT: the pipeline's steps on a class-folder set, ROOT named as the data set."""
    root, templates = colours
    env = {**os.environ, "TASK": "zeroshot", "DATA_DIR": str(root), "TEMPLATES": str(templates)}
    result = subprocess.run([sys.executable, str(ROOT / "openclip_pipeline.py"), "--output-dir", str(tmp_path / "run"),
                             "--steps", "1,2,4,5", "--batch-sizes", "4", "--backend", "onnxruntime", "--no-reference",
                             "--workers", "1"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["preprocess"]) == {"zeroshot"} and results["preprocess"]["zeroshot"]["dataset"] == str(root)
    (entry,) = results["accuracy"]["zeroshot"]
    assert entry["backend"] == "onnxruntime" and entry["metrics"]["acc1"] >= 0.6 and entry["templates"] == 3
    assert "--templates" in results["commands"]["preprocess"][0] and not (tmp_path / "run" / "prep").exists()


def test_a_class_whose_prompts_embed_to_zero_wins_nothing():
    """Class 1's prompts embed to zero (a broken text tower): its weights stay zero and its images tie at best,
    counted against them — a NaN class would have 'won' every one of its images."""
    text = np.repeat(np.eye(3, dtype=np.float32), 2, axis=0)  # 3 classes × 2 templates
    text[2:4] = 0.0
    weights = classifier(text, 3, 2)
    assert np.isfinite(weights).all() and not weights[1].any()
    images = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    metrics, tied = classify(images, weights, [0, 1, 2])
    assert metrics["acc1"] == pytest.approx(2 / 3) and metrics["mean_per_class_recall"] == pytest.approx(2 / 3)


def test_mean_per_class_recall_is_over_the_classes_present():
    """Five classes, images of classes 0 and 2 only, some predicted as absent classes 1 and 3: the mean of
    the two present classes' recalls (2/3 and 1/2), as sklearn's balanced accuracy (CLIP_benchmark's) —
    not over all five classes, nor over every class predicted."""
    from sklearn.metrics import balanced_accuracy_score

    weights = np.eye(5, dtype=np.float32)
    labels = np.array([0, 0, 0, 2, 2])
    predicted = np.array([0, 0, 1, 2, 3])
    images = np.eye(5, dtype=np.float32)[predicted] + np.linspace(0.01, 0.05, 5, dtype=np.float32)  # no ties
    metrics, tied = classify(images, weights, labels)
    assert tied == 0 and metrics["acc1"] == pytest.approx(3 / 5)
    assert metrics["mean_per_class_recall"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected = balanced_accuracy_score(labels, predicted)
    assert metrics["mean_per_class_recall"] == pytest.approx(expected)
