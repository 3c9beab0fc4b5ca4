"""Reading ais_bench-layout folders and pairing them, with and without a manifest."""

import json
import subprocess
import sys

import numpy as np
import pytest

from openclip_ascend.dataset import Manifest
from openclip_ascend.files import KitError
from openclip_ascend.metrics import retrieval_metrics
from openclip_ascend.postprocess import evaluate_folders, read_embedding_dir


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
    assert with_manifest == retrieval_metrics(images, texts, [c.image for c in m.captions])


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


def test_cli_prints_reference_line_and_writes_json(layout, tmp_path):
    vision, text, manifest = layout
    results = tmp_path / "recall.json"
    out = subprocess.run([sys.executable, "openclip_postprocess.py", "--vision-embeds", str(vision),
                          "--text-embeds", str(text), "--manifest", str(manifest), "--results-file", str(results)],
                         capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("Metrics: "))
    assert "'image_retrieval_recall@5'" in line and "'text_retrieval_recall@5'" in line
    saved = json.loads(results.read_text())
    assert set(saved) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert saved == evaluate_folders(vision, text, manifest)[0]
