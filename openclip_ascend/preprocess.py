"""Step 1: flickr30k images and captions → ``images/{stem}.npy`` and ``texts/{stem}_{k}.npy`` + manifest."""

import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .dataset import ANNOTATION_FILE, read_annotations
from .files import KitError, save_npy
from .transforms import ImagePreprocessor, PreprocessConfig, Tokenizer

_worker_preprocessor = None


def _init_worker(config_dict):
    global _worker_preprocessor
    _worker_preprocessor = ImagePreprocessor(PreprocessConfig.from_dict(config_dict))


def _convert_image(job):
    source, target = job
    try:
        with Image.open(source) as img:
            pixels = _worker_preprocessor(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise KitError(f"{source}: cannot be read as an image ({exc}); replace the file or remove it "
                       f"from {ANNOTATION_FILE}") from exc
    save_npy(target, pixels[None])
    return target


def default_workers():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def convert_images(jobs, config, workers):
    """Run ``(source, target)`` jobs over ``workers`` processes; the bytes written do not depend on it."""
    bar = tqdm(total=len(jobs), desc="images", unit="img")
    if workers <= 1:
        _init_worker(config.to_dict())
        for job in jobs:
            _convert_image(job)
            bar.update()
    else:
        # fork starts workers at once (they only use PIL and numpy); spawn where fork does not exist
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with context.Pool(workers, initializer=_init_worker, initargs=(config.to_dict(),)) as pool:
            for _ in pool.imap_unordered(_convert_image, jobs, chunksize=16):
                bar.update()
    bar.close()


def preprocess_dataset(data_dir, save_dir, model_name, pretrained=None, workers=None):
    """Write the arrays and ``manifest.json`` under ``save_dir``; returns the Manifest."""
    from .models import load_model, preprocess_config

    data_dir, save_dir = Path(data_dir), Path(save_dir)
    manifest = read_annotations(data_dir / ANNOTATION_FILE)
    missing = [name for name in manifest.images if not (data_dir / name).is_file()]
    if missing:
        raise KitError(f"{data_dir / missing[0]}: image named in {ANNOTATION_FILE} not found "
                       f"({len(missing)} missing in all); put the images beside the annotation file")
    config = preprocess_config(load_model(model_name), model_name, pretrained)
    tokenizer = Tokenizer(model_name)
    manifest.model_name = model_name
    manifest.preprocess = config.to_dict()
    manifest.context_length = tokenizer.context_length

    jobs = [(data_dir / name, save_dir / "images" / f"{stem}.npy")
            for name, stem in zip(manifest.images, manifest.image_stems)]
    convert_images(jobs, config, workers or default_workers())

    tokens = tokenizer([caption.text for caption in manifest.captions])
    for caption, row in zip(tqdm(manifest.captions, desc="texts", unit="caption"), tokens):
        save_npy(save_dir / "texts" / f"{caption.stem}.npy", np.ascontiguousarray(row[None]))
    manifest.save(save_dir / "manifest.json")
    return manifest
