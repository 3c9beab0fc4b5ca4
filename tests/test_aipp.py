"""AIPP: uint8 arrays recovered exactly from step 1's, the static config atc takes read back as atc reads it
(protobuf text format of insert_op.proto: real configs' shapes parsed, what atc rejects refused in one line),
its fp16 arithmetic emulated step by step on non-square sources and costed against the float path."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openclip_ascend.ascend.aipp import aipp_config, block_for_input, emulate, parse_aipp_config, to_uint8
from openclip_ascend.data.dataset import Manifest
from openclip_ascend.evaluate.aipp_estimate import estimate
from openclip_ascend.files import KitError

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # open_clip's OpenAI values


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
        assert u8.dtype == np.uint8 and u8.shape == (1, *pre["size"], 3)
        assert all(np.array_equal(lut[c][u8[..., c]], pixels[:, c]) for c in range(3))  # exactly step 1's pixels
    (config,) = parse_aipp_config((prep / "aipp.cfg").read_text(), "aipp.cfg")
    assert config["input_format"] == "RGB888_U8" and config["aipp_mode"] == "static"
    assert (config["src_image_size_h"], config["src_image_size_w"]) == tuple(pre["size"])
    assert config["min_chn_0"] == pytest.approx(255 * pre["mean"][0], abs=1e-5)
    # printed to 10 decimals, then stored as a 32-bit float: within float32's relative step
    assert config["var_reci_chn_2"] == pytest.approx(1 / (255 * pre["std"][2]), rel=1.2e-7)
    with pytest.raises(KitError, match="not made by step 1"):
        to_uint8(np.full((1, 3, 2, 2), 0.123, np.float32), pre["mean"], pre["std"])


def test_the_kits_config_keeps_a_non_square_source():
    (config,) = parse_aipp_config(aipp_config(MEAN, STD, 200, 300))
    assert (config["src_image_size_h"], config["src_image_size_w"]) == (200, 300)
    assert config["related_input_rank"] == 0 and block_for_input([config]) is config


def _fp16_step_bound(u, exact_shift, deviation, reciprocal):
    """The largest error AIPP's three steps can make when each result is rounded with unit roundoff ``u``:
    min_chn stored off by ≤ u·|min|, then x − min, var_reci and the product each off by ≤ u relative (3.01 u
    with the second-order terms), plus the config's printed decimals (< 1e-5 on min, 1e-7 relative on var)
    and the fp16 subnormal spacing near zero."""
    return u * reciprocal * (1.01 * np.abs(exact_shift) + 3.01 * np.abs(deviation)) + reciprocal * 1e-5 + 1e-7


def test_emulation_rounds_each_step_to_fp16_on_a_non_square_source():
    """16 × 40 sources holding every uint8 value in each channel: AIPP's result is within what fp16 steps
    allow of the exact (x/255 − mean)/std, further off than fp32 arithmetic could be, and further off than
    one final rounding to fp16 — each step is stored in fp16."""
    height, width = 16, 40
    (config,) = parse_aipp_config(aipp_config(MEAN, STD, height, width))
    rng = np.random.default_rng(3)
    images = np.stack([rng.permutation(np.arange(2 * height * width) % 256) for _ in range(3)], axis=-1)
    images = images.reshape(2, height, width, 3).astype(np.uint8)
    emulated = emulate(images, config)
    assert emulated.shape == (2, 3, height, width) and emulated.dtype == np.float32
    x = images.transpose(0, 3, 1, 2).astype(np.float64)
    shift = 255 * np.array(MEAN)[None, :, None, None]
    reciprocal = 1 / (255 * np.array(STD))[None, :, None, None]
    exact = (x - shift) * reciprocal
    error = np.abs(emulated - exact)
    assert (error <= _fp16_step_bound(2.0 ** -11, shift, x - shift, reciprocal)).all()
    assert (error > _fp16_step_bound(2.0 ** -24, shift, x - shift, reciprocal)).any()  # not fp32 arithmetic
    assert (error > 2.0 ** -11 * np.abs(exact) + 1e-6).any()  # not one rounding of an exact result
    with pytest.raises(KitError, match="images of 40×16 .* source is 16×40"):
        emulate(images.transpose(0, 2, 1, 3), config)


def test_emulated_aipp_is_costed_against_the_float_path(prep_dir, tiny_onnx):
    cost = estimate(tiny_onnx, prep_dir)
    assert 0.999 < cost["vision_agreement"]["min_cosine"] < 1.0
    for key in ("image_retrieval_recall@5", "text_retrieval_recall@5"):
        assert abs(cost["aipp"][key] - cost["float"][key]) <= 0.1 + 1e-9  # 10 images: one query is 0.1


# two inputs as GE's aipp_config_example.md writes them (YUV420SP_U8 with its csc matrix, inline comments),
# with CRLF line ends, then blocks in other spellings protobuf's text format accepts
REAL_CONFIG = "\r\n".join([
    "# AIPP for a two-input model",
    "aipp_op {",
    "       aipp_mode : static",
    "       related_input_rank : 0  # the first input",
    "       src_image_size_w : 608",
    "       src_image_size_h : 416 # height",
    "       crop : false",
    "       input_format : YUV420SP_U8",
    "       csc_switch : true",
    "       rbuv_swap_switch : false",
    "       matrix_r0c0 : 298",
    "       matrix_r0c1 : 0",
    "       matrix_r0c2 : 409",
    "       matrix_r1c0 : 298",
    "       matrix_r1c1 : -100",
    "       matrix_r1c2 : -208",
    "       matrix_r2c0 : 298",
    "       matrix_r2c1 : 516",
    "       matrix_r2c2 : 0",
    "       input_bias_0 : 16",
    "       input_bias_1 : 128",
    "       input_bias_2 : 128",
    "       mean_chn_0 : 104",
    "       mean_chn_1 : 117",
    "       mean_chn_2 : 123",
    "       var_reci_chn_0 : 3.90625e-3",
    "}",
    "aipp_op: {",
    "\taipp_mode: static; related_input_rank: 1, input_format: RGB888_U8",
    "\tsrc_image_size_w: 0x20 src_image_size_h: 24",
    "\tinput_edge_idx: [0, 1]",
    "\tmin_chn_1: -1.5e1 min_chn_2: 0.1f var_reci_chn_1: [0.25]",
    "}",
    "aipp_op < aipp_mode: dynamic related_input_rank: 2 max_src_image_size: 752640 >",
    ""])


def test_real_configs_parse_as_atc_reads_them():
    blocks = parse_aipp_config(REAL_CONFIG, "two_inputs.cfg")
    assert [block["related_input_rank"] for block in blocks] == [0, 1, 2]
    matrix = dict(zip([f"matrix_r{r}c{c}" for r in range(3) for c in range(3)],
                      [298, 0, 409, 298, -100, -208, 298, 516, 0]))
    assert block_for_input(blocks, 0) == {
        "aipp_mode": "static", "related_input_rank": 0, "src_image_size_w": 608, "src_image_size_h": 416,
        "crop": False, "input_format": "YUV420SP_U8", "csc_switch": True, "rbuv_swap_switch": False, **matrix,
        "input_bias_0": 16, "input_bias_1": 128, "input_bias_2": 128, "mean_chn_0": 104, "mean_chn_1": 117,
        "mean_chn_2": 123, "var_reci_chn_0": 0.00390625}
    assert block_for_input(blocks, 1) == {
        "aipp_mode": "static", "related_input_rank": 1, "input_format": "RGB888_U8", "src_image_size_w": 32,
        "src_image_size_h": 24, "input_edge_idx": [0, 1], "min_chn_1": -15.0, "var_reci_chn_1": 0.25,
        "min_chn_2": float(np.float32(0.1))}  # a proto float: 32 bits
    assert block_for_input(blocks, 2) == {"aipp_mode": "dynamic", "related_input_rank": 2, "max_src_image_size": 752640}
    assert block_for_input(blocks, 3) is None
    with pytest.raises(KitError, match="covers RGB888_U8 normalisation only, not input_format YUV420SP_U8"):
        emulate(np.zeros((1, 416, 608, 3), np.uint8), blocks[0])


HEAD = "aipp_op {\n aipp_mode: static\n input_format: RGB888_U8\n"


@pytest.mark.parametrize("text, line, reason", [
    (HEAD + " src_image_size_h ： 224\n}\n", 4, "unexpected character '：'"),  # a full-width colon
    (HEAD + " src_image_size_x : 224\n}\n", 4, 'no field named "src_image_size_x"'),
    (HEAD + " src_image_size_w : 224.5\n}\n", 4, "expected an integer, found '224.5'"),
    (HEAD + ' src_image_size_w : "224"\n}\n', 4, "expected an integer"),
    (HEAD + " src_image_size_w : 224abc\n}\n", 4, "need space between number"),
    (HEAD + " src_image_size_w 224\n}\n", 4, "expected ':'"),
    (HEAD + " src_image_size_w : 224 # width\n src_image_size_w : 225\n}\n", 5, "specified multiple times"),
    ("aipp_op {\n aipp_mode: static\n input_format: RGB\n}\n", 3, "unknown enumeration value 'RGB'"),
    (HEAD + " related_input_rank : -1\n}\n", 4, "out of range for uint32"),
    (HEAD + " src_image_size_w : 2147483648\n}\n", 4, "out of range for int32"),
    (HEAD + " src_image_size_w : 224\n", 4, "ends inside a message"),
    ("aipp_mode : static\n", 1, 'type "domi.InsertNewOps" has no field named "aipp_mode"'),
    (HEAD + " var_reci_chn_0 : 0.1\n var_reci_chn_0 : 0.2\n}\n", 4, "gives var_reci_chn_0 2 times"),
    ("aipp_op {\n aipp_mode: static\n}\n", 1, "is static but sets no input_format"),
    ("aipp_op {\n input_format: RGB888_U8\n}\n", 1, "needs aipp_mode static or dynamic"),
    ("aipp_op {\n aipp_mode: dynamic\n}\n", 1, "max_src_image_size is not above 0"),
    (HEAD + " src_image_size_h : -2\n}\n", 4, "sets src_image_size_h below 0"),
    (HEAD + "}\n" + HEAD + "}\n", 5, "names the same input as the block on line 1"),
])
def test_what_atc_rejects_is_refused_in_one_line(text, line, reason):
    with pytest.raises(KitError) as error:
        parse_aipp_config(text, "bad.cfg")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"bad.cfg:{line}:") and reason in message
