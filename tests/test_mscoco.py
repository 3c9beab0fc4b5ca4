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
    annotation_file = coco / "coco_test_karpathy.json"
    data = json.loads(annotation_file.read_text())
    data["annotations"].sort(key=lambda entry: -entry["image_id"])  # the highest id's captions first
    annotation_file.write_text(json.dumps(data))
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


def test_images_in_id_order_whatever_the_annotation_order(tmp_path):
    """torchvision's CocoCaptions (CLIP_benchmark's loader) lists images by sorted id and each image's
    captions in file order: annotations interleaved and out of id order change neither."""
    images = [{"id": 30, "file_name": "c.jpg"}, {"id": 10, "file_name": "a.jpg"}, {"id": 20, "file_name": "b.jpg"}]
    annotations = [{"image_id": i, "id": n, "caption": text}
                   for n, (i, text) in enumerate([(20, "b first"), (30, "c first"), (10, "a first"), (20, "b second"),
                                                  (10, "a second")])]
    (tmp_path / "coco_test_karpathy.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    manifest = read_coco_annotations(tmp_path / "coco_test_karpathy.json")
    assert manifest.images == ["val2014/a.jpg", "val2014/b.jpg", "val2014/c.jpg"]
    assert [(c.image, c.stem, c.text) for c in manifest.captions] == [
        (0, "a_0", "a first"), (0, "a_1", "a second"), (1, "b_0", "b first"), (1, "b_1", "b second"),
        (2, "c_0", "c first")]


def test_bad_coco_annotations_are_one_line(tmp_path):
    (tmp_path / "coco_test_karpathy.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                                                  "annotations": [{"image_id": 2, "caption": "x"}]}))
    with pytest.raises(KitError, match="image id 2, which \"images\" does not list"):
        read_coco_annotations(tmp_path / "coco_test_karpathy.json")
    (tmp_path / "coco_test_karpathy.json").write_text("[]")
    with pytest.raises(KitError, match="not a COCO captions file"):
        read_coco_annotations(tmp_path / "coco_test_karpathy.json")
