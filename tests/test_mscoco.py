"""MSCOCO retrieval: CLIP_benchmark's layout read into the same manifest, and steps 1–5 on it."""

import json

import numpy as np
import pytest

from openclip_ascend.dataset import read_coco_annotations
from openclip_ascend.files import KitError
from openclip_ascend.models import TINY_MODEL
from openclip_ascend.pipeline import RunConfig, run_steps
from openclip_ascend.preprocess import preprocess_dataset
from openclip_ascend.sample import write_coco_sample_dir, write_sample_dir


def test_coco_layout_gives_the_flickr_layouts_arrays_and_captions(tmp_path):
    coco = write_coco_sample_dir(tmp_path / "coco", count=12, seed=5)
    flickr = write_sample_dir(tmp_path / "flickr", count=12, seed=5)
    a = preprocess_dataset(coco, tmp_path / "prep_coco", TINY_MODEL, dataset="mscoco", workers=1)
    b = preprocess_dataset(flickr, tmp_path / "prep_flickr", TINY_MODEL, workers=1)
    assert [c.text for c in a.captions] == [c.text for c in b.captions]  # id order = the scenes' order
    assert a.images[0] == "val2014/COCO_val2014_000000391895.jpg" and a.captions[0].stem == "COCO_val2014_000000391895_0"
    for coco_stem, flickr_stem in zip(a.image_stems, b.image_stems):
        assert np.array_equal(np.load(tmp_path / "prep_coco" / "images" / f"{coco_stem}.npy"),
                              np.load(tmp_path / "prep_flickr" / "images" / f"{flickr_stem}.npy"))


def test_pipeline_runs_unchanged_with_dataset_mscoco(tmp_path):
    data = write_coco_sample_dir(tmp_path / "coco", count=40, seed=9)
    config = RunConfig(output_dir=tmp_path / "run", data_dir=data, dataset="mscoco", batch_sizes=(4,),
                       backend="onnxruntime", reference=False, workers=1)
    results = run_steps(config, steps=(1, 2, 4, 5))
    (entry,) = results["accuracy"]["retrieval"]
    assert entry["images"] == 40 and entry["metrics"]["image_retrieval_recall@5"] > 0.5  # chance 0.125
    assert "--dataset mscoco" in results["commands"]["preprocess"][0]


def test_bad_coco_annotations_are_one_line(tmp_path):
    (tmp_path / "coco_test_karpathy.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                                                  "annotations": [{"image_id": 2, "caption": "x"}]}))
    with pytest.raises(KitError, match="image id 2, which \"images\" does not list"):
        read_coco_annotations(tmp_path / "coco_test_karpathy.json")
    (tmp_path / "coco_test_karpathy.json").write_text("[]")
    with pytest.raises(KitError, match="not a COCO captions file"):
        read_coco_annotations(tmp_path / "coco_test_karpathy.json")
