"""Reading ais_bench-layout folders and pairing them, with and without a manifest."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openclip_ascend.data.dataset import Manifest
from openclip_ascend.evaluate.metrics import retrieval_metrics
from openclip_ascend.evaluate.postprocess import evaluate_folders, read_embedding_dir
from openclip_ascend.files import KitError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def layout(tmp_path):
    """A tiny ais_bench layout: 4 images × 2 captions with embeddings that make retrieval exact."""
    rng = np.random.default_rng(3)
    image_embeds = rng.standard_normal((4, 8)).astype(np.float32)
    vision, text = tmp_path / "out" / "vision", tmp_path / "out" / "text"
    vision.mkdir(parents=True)
    text.mkdir(parents=True)
    stems = ["5", "40", "300", "2000"]
    captions = []
    for i, stem in enumerate(stems):
        np.save(vision / f"{stem}_0.npy", image_embeds[i][None])
        for k in range(2):
            noisy = image_embeds[i] + 0.3 * rng.standard_normal(8).astype(np.float32)
            np.save(text / f"{stem}_{k}_0.npy", noisy[None].astype(np.float32))
            captions.append({"stem": f"{stem}_{k}", "image": i, "text": f"caption {k}"})
    (vision / "sumary.json").write_text("{}")  # old ais_bench summary inside the folder
    (tmp_path / "out" / "vision_summary.json").write_text("{}")
    manifest = {"format": "openclip-ascend-manifest/1", "model_name": "x", "preprocess": {}, "context_length": 77,
                "images": [{"stem": s, "file": f"{s}.jpg"} for s in stems], "captions": captions}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return vision, text, tmp_path / "manifest.json"


def test_manifest_and_name_pairing_agree(layout):
    vision, text, manifest = layout
    with_manifest, counts = evaluate_folders(vision, text, manifest)
    by_names, _ = evaluate_folders(vision, text)
    assert with_manifest == by_names
    assert counts == {"images": 4, "captions": 8, "skipped_in_preprocessing": 0, "extra_outputs_ignored": 0}
    m = Manifest.load(manifest)
    images = np.stack([np.load(vision / f"{s}_0.npy")[0] for s in m.image_stems])
    texts = np.stack([np.load(text / f"{c.stem}_0.npy")[0] for c in m.captions])
    assert with_manifest.metrics == retrieval_metrics(images, texts, [c.image for c in m.captions])


def test_summary_files_are_not_outputs(layout):
    vision, _, _ = layout
    assert sorted(read_embedding_dir(vision)) == ["2000", "300", "40", "5"]


def test_missing_output_is_refused(layout):
    vision, text, manifest = layout
    (text / "300_1_0.npy").unlink()
    with pytest.raises(KitError, match=r"1 of 8 text outputs missing \(first: 300_1_0\)"):
        evaluate_folders(vision, text, manifest)


def test_width_mismatch_is_refused(layout):
    vision, text, manifest = layout
    for path in text.glob("*.npy"):
        np.save(path, np.zeros((1, 16), dtype=np.float32))
    with pytest.raises(KitError, match="widths differ"):
        evaluate_folders(vision, text, manifest)


def test_cli_prints_reference_line_last_and_writes_json(tmp_path):
    """500 one-hot images; images 0–458 have a caption equal to their own vector, the rest and images 0–40
    (a second caption) one opposite to it, which ranks last. So text→image hits 459 of 541 captions and
    image→text 459 of 500 images, at every k: stdout ends with an empty line and the reference's Metrics
    line, the float32 means widened to Python floats, and nothing after it."""
    vision, text = tmp_path / "out" / "vision", tmp_path / "out" / "text"
    vision.mkdir(parents=True)
    text.mkdir(parents=True)
    captions = []
    for i, image in enumerate(np.eye(500, dtype=np.float32)):
        np.save(vision / f"{i}_0.npy", image[None])
        for k, caption in enumerate([image if i < 459 else -image] + ([-image] if i <= 40 else [])):
            np.save(text / f"{i}_{k}_0.npy", caption[None])
            captions.append({"stem": f"{i}_{k}", "image": i, "text": ""})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": "openclip-ascend-manifest/1", "images": [
        {"stem": str(i), "file": f"{i}.jpg"} for i in range(500)], "captions": captions}))
    results = tmp_path / "recall.json"
    out = subprocess.run([sys.executable, "openclip_postprocess.py", "--vision-embeds", str(vision),
                          "--text-embeds", str(text), "--manifest", str(manifest), "--results-file", str(results)],
                         capture_output=True, text=True, check=True).stdout
    saved = json.loads(results.read_text())
    assert saved["check"] == "passed" and saved["metrics"] == {
        f"{direction}_retrieval_recall@{k}": hits for k in (1, 5, 10)
        for direction, hits in (("image", 459 / 541), ("text", 459 / 500))}
    image_r5 = float(np.float32(459) / np.float32(541))  # torch's float32 mean, widened
    line = "Metrics: {'image_retrieval_recall@5': %r, 'text_retrieval_recall@5': 0.9179999828338623}" % image_r5
    assert out.split("\n")[-3:] == ["", line, ""]  # an empty line, the Metrics line, its newline and nothing more


def test_metrics_line_is_the_references_float32_text():
    from openclip_ascend.evaluate.metrics import RetrievalResult
    from openclip_ascend.report.tables import metrics_line

    keys = ("image_retrieval_recall@5", "text_retrieval_recall@5")
    result = RetrievalResult(metrics={k: 0.0 for k in keys}, hits=dict(zip(keys, (4421, 962))),
                             queries=dict(zip(keys, (5000, 1000))))
    # torch's float32 mean widened to a Python float prints 0.9620000123977661; the ModelZoo README's
    # copy of the line shows 0.962000012397766 (one digit short, not a float32 value widened)
    assert metrics_line(result) == ("Metrics: {'image_retrieval_recall@5': 0.8841999769210815, "
                                    "'text_retrieval_recall@5': 0.9620000123977661}")
    result.hits = dict(zip(keys, (459, 459)))
    result.queries = dict(zip(keys, (500, 500)))
    assert "0.9179999828338623" in metrics_line(result)


def test_cli_defaults_are_the_references(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "openclip_postprocess.py")], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: om_outputs/vision_embed_bs8: embedding folder not found; point it at "
                                  "ais_bench's --output/--output_dirname")


def test_collapsed_outputs_fail_loudly(layout, tmp_path):
    vision, text, manifest = layout
    for path in list(vision.glob("*_0.npy")) + list(text.glob("*_0.npy")):
        np.save(path, np.full((1, 8), 0.3, dtype=np.float32))  # finite, so the NaN check cannot catch it
    out = subprocess.run([sys.executable, "openclip_postprocess.py", "--vision-embeds", str(vision),
                          "--text-embeds", str(text), "--manifest", str(manifest)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "WARNING: accuracy check FAILED" in out.stderr and "degenerate embeddings" in out.stderr
    # 4 images: recall@5 of text→image is 1 whatever the model; at k=1 ties decide everything
    assert out.stdout.splitlines()[-1] == ("Metrics: {'image_retrieval_recall@5': 1.0, "
                                           "'text_retrieval_recall@5': 0.0}")
    assert ("exact ties, counted against the positive, lower image_retrieval_recall@1 0.0000 (1.0000 if they went "
            "to the positive; 8 of 8 queries)") in out.stdout


def test_two_outputs_for_one_input_are_refused(layout):
    vision, _, _ = layout
    (vision / "device1").mkdir()
    np.save(vision / "device1" / "40_0.npy", np.zeros((1, 8), dtype=np.float32))
    with pytest.raises(KitError, match=r"40_0.npy and .*device1/40_0.npy: two outputs for input '40'"):
        read_embedding_dir(vision)
