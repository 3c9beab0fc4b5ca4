"""Pixels and tokens exactly as open_clip makes them, without torch in the pixel path.

The image path repeats open_clip's eval transform operation by operation on PIL images (the same
resize, crop and pad calls torchvision makes for PIL input), then replaces ToTensor + Normalize
by a per-channel lookup table holding the very float32 results those two ops give for each of the
256 byte values, so the output is bit-identical and cheap enough to run in worker processes.
"""

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps

_PIL_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


@dataclass(frozen=True)
class PreprocessConfig:
    """open_clip's PreprocessCfg, reduced to what the eval transform reads."""

    size: tuple  # (height, width)
    mean: tuple
    std: tuple
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_dict(cls, cfg):
        size = cfg["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        mean, std = cfg["mean"], cfg["std"]
        mean = tuple(mean) if isinstance(mean, (list, tuple)) else (mean,) * 3
        std = tuple(std) if isinstance(std, (list, tuple)) else (std,) * 3
        interpolation = cfg.get("interpolation") or "bicubic"
        # open_clip maps anything but 'bilinear' (e.g. 'random') to bicubic at eval time
        interpolation = "bilinear" if interpolation == "bilinear" else "bicubic"
        return cls(size=size, mean=mean, std=std, interpolation=interpolation,
                   resize_mode=cfg.get("resize_mode") or "shortest", fill_color=int(cfg.get("fill_color", 0)))

    def to_dict(self):
        return asdict(self)


def _resize_if_needed(img, height, width, resample):
    """torchvision's F.resize on PIL: a no-op when the size already matches."""
    if img.size == (width, height):
        return img
    return img.resize((width, height), resample)


def _keep_ratio_size(img, target, longest):
    """open_clip ResizeKeepRatio.get_params with its random parts off."""
    h, w = img.size[1], img.size[0]
    ratio_h, ratio_w = h / target[0], w / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(h / ratio), round(w / ratio)


def _pad_to(img, height, width, fill):
    """open_clip center_crop_or_pad's padding step (torchvision F_pil.pad, constant mode)."""
    img_w, img_h = img.size
    left = (width - img_w) // 2 if width > img_w else 0
    top = (height - img_h) // 2 if height > img_h else 0
    right = (width - img_w + 1) // 2 if width > img_w else 0
    bottom = (height - img_h + 1) // 2 if height > img_h else 0
    channels = len(img.getbands())
    fill_value = tuple([fill] * channels) if channels > 1 else fill
    if img.mode != "F":
        fill_value = tuple(int(v) for v in fill_value) if isinstance(fill_value, tuple) else int(fill_value)
    if img.mode == "P":
        palette = img.getpalette()
        img = ImageOps.expand(img, border=(left, top, right, bottom), fill=fill_value)
        img.putpalette(palette)
        return img
    return ImageOps.expand(img, border=(left, top, right, bottom), fill=fill_value)


def _center_crop(img, height, width):
    img_w, img_h = img.size
    top = int(round((img_h - height) / 2.0))
    left = int(round((img_w - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


class ImagePreprocessor:
    """Callable PIL image → float32 array (3, H, W), bit-identical to open_clip's eval transform."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        self.resample = _PIL_RESAMPLE[config.interpolation]
        scaled = np.arange(256, dtype=np.float32) / np.float32(255)
        self.lut = np.stack([(scaled - np.float32(m)) / np.float32(s) for m, s in zip(config.mean, config.std)])

    def geometry(self, img):
        """Resize, crop or pad as open_clip does for the configured resize mode; then RGB."""
        height, width = self.config.size
        mode = self.config.resize_mode
        if mode == "squash":
            img = _resize_if_needed(img, height, width, self.resample)
        elif mode == "longest":
            img = _resize_if_needed(img, *_keep_ratio_size(img, (height, width), 1.0), self.resample)
            if img.size[0] < width or img.size[1] < height:
                img = _pad_to(img, height, width, self.config.fill_color)
            if img.size != (width, height):
                img = _center_crop(img, height, width)
        elif mode == "shortest":
            if height == width:
                short, long = sorted(img.size)
                new_long = int(height * long / short)
                new_w, new_h = (height, new_long) if img.size[0] <= img.size[1] else (new_long, height)
                img = _resize_if_needed(img, new_h, new_w, self.resample)
            else:  # open_clip builds ResizeKeepRatio here without its interpolation: always bicubic
                img = _resize_if_needed(img, *_keep_ratio_size(img, (height, width), 0.0), Image.BICUBIC)
            img = _center_crop(img, height, width)
        else:
            raise ValueError(f"unknown resize_mode {mode!r}: open_clip knows shortest, longest and squash")
        return img.convert("RGB")

    def __call__(self, img):
        pixels = np.asarray(self.geometry(img))
        out = np.empty((3,) + pixels.shape[:2], dtype=np.float32)
        for channel in range(3):
            np.take(self.lut[channel], pixels[..., channel], out=out[channel])
        return out


class Tokenizer:
    """open_clip's own tokenizer for the model, returning int64 arrays (N, context_length)."""

    def __init__(self, model_name):
        from ..files import KitError
        from ..model.loading import open_clip_module

        open_clip = open_clip_module()

        self.model_name = model_name
        hf_name = ((open_clip.get_model_config(model_name) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
        if hf_name:  # open_clip would try to download it from the Hugging Face hub here
            raise KitError(f"--model-name {model_name}: its tokenizer is the Hugging Face tokenizer {hf_name!r}, "
                           "which this kit does not support (it needs a download and differs from open_clip's BPE); "
                           "use a model with the standard tokenizer (ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336, …)")
        self._tokenizer = open_clip.get_tokenizer(model_name)
        if not isinstance(self._tokenizer, open_clip.SimpleTokenizer):
            raise KitError(f"--model-name {model_name}: its tokenizer ({type(self._tokenizer).__name__}) is "
                           "not open_clip's built-in BPE tokenizer; this kit supports models with the standard "
                           "tokenizer (e.g. ViT-B-32, ViT-L-14)")
        self.context_length = self._tokenizer.context_length

    def __call__(self, texts):
        return self._tokenizer(list(texts)).numpy().astype(np.int64)


def preprocess_config(model, model_name=None, pretrained=None):
    """The model's eval preprocessing, with a pretrained tag's own mean/std/interpolation on top."""
    from pathlib import Path

    from ..model.loading import open_clip_module

    open_clip = open_clip_module()
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    if pretrained and model_name and not Path(pretrained).is_file():
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
        cfg.update({key: tag_cfg[key] for key in ("mean", "std", "interpolation", "resize_mode", "fill_color")
                    if tag_cfg.get(key) is not None})
    return PreprocessConfig.from_dict(cfg)
