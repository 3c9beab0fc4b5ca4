"""Pixels and tokens must equal open_clip's own, bit for bit."""

import numpy as np
import pytest
from PIL import Image

from openclip_ascend.data.transforms import ImagePreprocessor, PreprocessConfig, Tokenizer

open_clip = pytest.importorskip("open_clip")
from open_clip.transform import PreprocessCfg, image_transform_v2  # noqa: E402

OPENAI = dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))


def _images():
    rng = np.random.default_rng(0)
    for width, height in [(500, 375), (97, 311), (224, 224), (225, 223), (3, 40), (640, 7)]:
        rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
        for mode in ("RGB", "L", "RGBA", "P", "CMYK", "LA", "I;16", "1"):
            # Pillow < 10 converts to I;16 only from L
            source = rgba.convert("L") if mode == "I;16" else rgba
            yield f"{mode}-{width}x{height}", rgba if mode == "RGBA" else source.convert(mode)


@pytest.mark.parametrize("cfg", [
    dict(size=(224, 224), resize_mode="shortest", interpolation="bicubic", **OPENAI),
    dict(size=(336, 336), resize_mode="shortest", interpolation="bicubic", **OPENAI),
    dict(size=(256, 192), resize_mode="shortest", interpolation="bilinear", **OPENAI),
    dict(size=(224, 224), resize_mode="squash", interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3),
    dict(size=(224, 224), resize_mode="longest", interpolation="bicubic", fill_color=0, **OPENAI),
], ids=["vit-b-32", "336", "non-square-bilinear", "squash", "longest-pad"])
def test_pixels_equal_open_clip_transform(cfg):
    reference = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    mine = ImagePreprocessor(PreprocessConfig.from_dict(cfg))
    for name, img in _images():
        try:
            expected = reference(img).numpy()
        except ValueError:  # a mode this Pillow cannot resize (I;16 before Pillow 10): the kit fails alike
            with pytest.raises(ValueError):
                mine(img)
            continue
        got = mine(img)
        assert got.dtype == np.float32, name
        assert got.shape == expected.shape, name
        assert np.array_equal(got, expected), f"{name}: max diff {np.abs(got - expected).max()}"


def test_model_preprocess_config_is_used(tiny_model):
    from openclip_ascend.data.transforms import preprocess_config

    config = preprocess_config(tiny_model)
    assert config.size == (224, 224)
    assert config.mean == OPENAI["mean"] and config.std == OPENAI["std"]
    assert config.resize_mode == "shortest" and config.interpolation == "bicubic"


CAPTIONS = [
    "A man in a red shirt, holding a \"sign\", stands on the corner.",
    "Two dogs &amp; a cat &lt;3 play in the snow",
    "Café crème – naïve façade, 東京の夜景 🌃 and emoji 😀",
    "  lots   of\twhitespace\n and newlines  ",
    "",
    " ".join(["word"] * 120),  # over 77 tokens: cut, EOT forced into the last slot
    "It\u2019s a \u201cquoted\u201d caption with mojibake: donâ€™t",
]


def test_tokens_equal_open_clip_tokenizer():
    tokenizer = Tokenizer("ViT-B-32")
    tokens = tokenizer(CAPTIONS)
    expected = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS).numpy()
    assert tokens.dtype == np.int64 and tokens.shape == (len(CAPTIONS), 77)
    assert np.array_equal(tokens, expected)
    long_row = tokens[CAPTIONS.index(" ".join(["word"] * 120))]
    assert long_row[0] == 49406 and long_row[-1] == 49407 and (long_row != 0).all()
    assert tokens[CAPTIONS.index("")].tolist()[:3] == [49406, 49407, 0]
