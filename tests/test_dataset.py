"""Annotation reading and the manifest."""

import numpy as np
import pytest

from openclip_ascend.data.dataset import ANNOTATION_FILE, Manifest, read_annotations
from openclip_ascend.data.preprocess import preprocess_dataset
from openclip_ascend.files import KitError
from openclip_ascend.model.loading import TINY_MODEL

ANNOTATIONS = '''image,caption
20.jpg,"A dog, running on grass."
3.jpg,Two people talk
20.jpg,"He said ""hello"" twice"
20.jpg,  padded caption  
3.jpg,Another one
100.jpg,Only one caption
'''


def test_read_annotations_keeps_file_order_and_quoting(tmp_path):
    path = tmp_path / ANNOTATION_FILE
    path.write_text(ANNOTATIONS, encoding="utf-8")
    manifest = read_annotations(path)
    assert manifest.images == ["20.jpg", "3.jpg", "100.jpg"]  # first appearance, not sorted
    assert [c.stem for c in manifest.captions] == ["20_0", "3_0", "20_1", "20_2", "3_1", "100_0"]
    assert [c.image for c in manifest.captions] == [0, 1, 0, 0, 1, 2]
    assert manifest.captions[0].text == "A dog, running on grass."
    assert manifest.captions[2].text == 'He said "hello" twice'
    assert manifest.captions[3].text == "padded caption"


def test_manifest_round_trip(tmp_path):
    path = tmp_path / ANNOTATION_FILE
    path.write_text(ANNOTATIONS, encoding="utf-8")
    manifest = read_annotations(path)
    manifest.model_name = "ViT-B-32"
    manifest.save(tmp_path / "manifest.json")
    loaded = Manifest.load(tmp_path / "manifest.json")
    assert loaded.images == manifest.images and loaded.captions == manifest.captions
    assert loaded.model_name == "ViT-B-32" and loaded.image_stems == ["20", "3", "100"]


def test_missing_header_is_a_clear_error(tmp_path):
    path = tmp_path / ANNOTATION_FILE
    path.write_text("1.jpg,a caption\n", encoding="utf-8")
    with pytest.raises(KitError, match="header 'image,caption'"):
        read_annotations(path)


def test_missing_annotation_file_names_it(tmp_path):
    with pytest.raises(KitError, match=ANNOTATION_FILE):
        read_annotations(tmp_path / ANNOTATION_FILE)


def test_preprocess_writes_reference_layout(prep_dir, sample_dir):
    manifest = Manifest.load(prep_dir / "manifest.json")
    assert len(manifest.images) == 10 and len(manifest.captions) == 50
    assert manifest.model_name == TINY_MODEL and manifest.preprocess["size"] == [224, 224]
    for stem in manifest.image_stems:
        array = np.load(prep_dir / "images" / f"{stem}.npy")
        assert array.dtype == np.float32 and array.shape == (1, 3, 224, 224)
    for caption in manifest.captions:
        tokens = np.load(prep_dir / "texts" / f"{caption.stem}.npy")
        assert tokens.dtype == np.int64 and tokens.shape == (1, 77)
        assert tokens[0, 0] == 49406 and 49407 in tokens[0]


def test_preprocess_pixels_match_open_clip_on_the_jpegs(prep_dir, sample_dir, tiny_model):
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    transform = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(tiny_model)), is_train=False)
    manifest = Manifest.load(prep_dir / "manifest.json")
    for name, stem in zip(manifest.images, manifest.image_stems):
        with Image.open(sample_dir / name) as img:
            expected = transform(img).numpy()[None]
        assert np.array_equal(np.load(prep_dir / "images" / f"{stem}.npy"), expected), name


def test_output_bytes_do_not_depend_on_worker_count(prep_dir, sample_dir, tmp_path):
    preprocess_dataset(sample_dir, tmp_path, TINY_MODEL, workers=2)
    produced = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    reference = sorted(p.relative_to(prep_dir) for p in prep_dir.rglob("*") if p.is_file())
    assert produced == reference
    for relative in produced:
        assert (tmp_path / relative).read_bytes() == (prep_dir / relative).read_bytes(), relative


def test_missing_image_is_named(sample_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / ANNOTATION_FILE).write_bytes((sample_dir / ANNOTATION_FILE).read_bytes())
    with pytest.raises(KitError, match=r"1000\.jpg.*not found"):
        preprocess_dataset(data, tmp_path / "out", TINY_MODEL, workers=1)
