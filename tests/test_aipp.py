"""AIPP: uint8 arrays recovered exactly from step 1's, the static config atc takes, its fp16 arithmetic
emulated and costed against the float path, and an AIPP OM through the stand-in tools."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openclip_ascend.aipp import aipp_config, emulate, estimate, parse_aipp_config, to_uint8
from openclip_ascend.dataset import Manifest
from openclip_ascend.files import KitError

ROOT = Path(__file__).resolve().parents[1]


def test_uint8_images_round_trip_and_the_config(sample_dir, tmp_path):
    prep = tmp_path / "prep"
    result = subprocess.run([sys.executable, str(ROOT / "openclip_preprocess.py"), "--data-dir", str(sample_dir),
                             "--save-dir", str(prep), "--model-name", "openclip-ascend-tiny", "--uint8", "--workers",
                             "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    pre = Manifest.load(prep / "manifest.json").preprocess
    stems = Manifest.load(prep / "manifest.json").image_stems
    lut = [(np.arange(256, dtype=np.float32) / np.float32(255) - np.float32(m)) / np.float32(s)
           for m, s in zip(pre["mean"], pre["std"])]
    for stem in stems:
        pixels, u8 = np.load(prep / "images" / f"{stem}.npy"), np.load(prep / "images_u8" / f"{stem}.npy")
        assert u8.dtype == np.uint8 and u8.shape == (1, 224, 224, 3)
        assert all(np.array_equal(lut[c][u8[..., c]], pixels[:, c]) for c in range(3))  # exactly step 1's pixels
    config = parse_aipp_config((prep / "aipp.cfg").read_text())
    assert config["input_format"] == "RGB888_U8" and config["src_image_size_w"] == 224
    assert config["min_chn_0"] == pytest.approx(255 * pre["mean"][0], abs=1e-5)
    assert config["var_reci_chn_2"] == pytest.approx(1 / (255 * pre["std"][2]), rel=1e-8)
    with pytest.raises(KitError, match="not made by step 1"):
        to_uint8(np.full((1, 3, 2, 2), 0.123, np.float32), pre["mean"], pre["std"])


def test_emulated_aipp_is_close_to_the_float_path_and_costed(prep_dir, tiny_onnx):
    pre = Manifest.load(prep_dir / "manifest.json").preprocess
    stem = Manifest.load(prep_dir / "manifest.json").image_stems[0]
    pixels = np.load(prep_dir / "images" / f"{stem}.npy")
    config = parse_aipp_config(aipp_config(pre["mean"], pre["std"], 224, 224))
    emulated = emulate(to_uint8(pixels, pre["mean"], pre["std"]), config)
    error = np.abs(emulated - pixels).max()
    assert 0 < error < 0.01  # fp16 steps: not exact, but within fp16's resolution of values up to ~2.2
    cost = estimate(tiny_onnx, prep_dir)
    assert 0.999 < cost["vision_agreement"]["min_cosine"] < 1.0
    for key in ("image_retrieval_recall@5", "text_retrieval_recall@5"):
        assert abs(cost["aipp"][key] - cost["float"][key]) <= 0.1 + 1e-9  # 10 images: one query is 0.1
