"""MSCOCO retrieval: CLIP_benchmark's layout read into the same manifest, and steps 1–5 on it."""

import json

import numpy as np
import pytest

from openclip_ascend.data.dataset import read_coco_annotations
from openclip_ascend.data.preprocess import preprocess_dataset
from openclip_ascend.data.sample import write_coco_sample_dir, write_sample_dir
from openclip_ascend.files import KitError
from openclip_ascend.model.loading import TINY_MODEL
from openclip_ascend.pipeline import RunConfig, run_steps


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


def test_an_image_without_captions_stays_as_clip_benchmark_keeps_it(tmp_path):
    """CocoCaptions lists every image id, captions or not: such an image is a distractor for every caption and a
    text-retrieval miss. Dropping it (as the kit once did) makes both recalls look better than CLIP_benchmark's."""
    import torch
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k

    from openclip_ascend.evaluate.metrics import evaluate_retrieval

    images = [{"id": i, "file_name": f"{name}.jpg"} for i, name in ((1, "a"), (2, "lone"), (3, "c"))]
    annotations = [{"image_id": 1, "caption": "a"}, {"image_id": 3, "caption": "c"}]
    (tmp_path / "coco_test_karpathy.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    manifest = read_coco_annotations(tmp_path / "coco_test_karpathy.json")
    assert manifest.images == ["val2014/a.jpg", "val2014/lone.jpg", "val2014/c.jpg"]
    assert [c.image for c in manifest.captions] == [0, 2]
    # the caption-less image is each caption's best match: every caption misses at k=1; images a and c find their
    # own caption first, the lone image has none to find
    image_embeds = np.array([[1.0, 0.2], [0.3, 1.0], [0.0, 1.0]], dtype=np.float32)
    text_embeds = np.array([[0.35, 1.0], [0.25, 1.0]], dtype=np.float32)
    result = evaluate_retrieval(image_embeds, text_embeds, [c.image for c in manifest.captions], ks=(1,))
    scores = torch.from_numpy(text_embeds / np.linalg.norm(text_embeds, axis=1, keepdims=True)) @ \
        torch.from_numpy(image_embeds / np.linalg.norm(image_embeds, axis=1, keepdims=True)).T
    positive = torch.zeros(2, 3, dtype=torch.bool)
    positive[0, 0] = positive[1, 2] = True
    theirs_text_to_image = (recall_at_k(scores, positive, 1) > 0).float().mean().item()
    theirs_image_to_text = (recall_at_k(scores.T, positive.T, 1) > 0).float().mean().item()
    assert result.metrics["image_retrieval_recall@1"] == theirs_text_to_image == 0.0
    assert result.metrics["text_retrieval_recall@1"] == pytest.approx(theirs_image_to_text) == pytest.approx(2 / 3)
