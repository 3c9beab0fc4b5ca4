"""Step 1: flickr30k images and captions → ``images/{stem}.npy`` and ``texts/{stem}_{k}.npy`` + manifest.

Bad input follows ``--on-error``: ``stop`` (default) ends at the first problem with a message that
names the file; ``skip`` leaves the item out, records it in the manifest and goes on. A re-run keeps
valid outputs and makes the missing ones (``--force`` redoes all), so an interrupted step resumes to
the same bytes an uninterrupted one writes.
"""

import contextlib
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..files import KitError, save_npy
from .dataset import ANNOTATION_FILE, COCO_ANNOTATION_FILE, Problems, image_stem, read_dataset, stem_clash
from .transforms import ImagePreprocessor, PreprocessConfig, Tokenizer, preprocess_config

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_worker_preprocessor = None


_PARENT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _parent_signals_held():
    """Hold SIGINT/SIGTERM while worker processes fork, so none can run the parent's handlers before
    its own are set (the parent's raise KeyboardInterrupt: in a worker that printed a traceback)."""
    held = hasattr(signal, "pthread_sigmask")
    if held:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
    try:
        yield
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _init_worker(config_dict, pool_worker=False):
    """Pool workers leave signals to the parent: Ctrl-C reaches the parent, which ends them with
    ``Pool.terminate()``'s SIGTERM, and that simply stops them (the parent then removes any
    temporary file a stopped worker left)."""
    global _worker_preprocessor
    if pool_worker:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _PARENT_SIGNALS)
    _worker_preprocessor = ImagePreprocessor(PreprocessConfig.from_dict(config_dict))


def read_pixels(path, preprocessor):
    """The preprocessed (C, H, W) pixels of the image at ``path``; ValueError(the reason it cannot be used)."""
    try:
        with Image.open(path) as img:
            return preprocessor(img)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"larger than Pillow's decompression-bomb limit ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # unreadable, truncated, not an image
        raise ValueError(f"cannot be read as an image ({exc})") from exc


def _convert_image(job):
    """(source, target) → None on success, else the reason the image cannot be used."""
    source, target = job
    try:
        pixels = read_pixels(source, _worker_preprocessor)
    except ValueError as exc:
        return str(exc)
    save_npy(target, pixels[None])
    return None


def default_workers():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_pool(workers, config):
    """A process pool for images whose workers a SIGTERM simply stops. Fork starts them at once (they
    only use PIL and numpy); spawn where fork does not exist."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with _parent_signals_held():
        return multiprocessing.get_context(method).Pool(workers, initializer=_init_worker,
                                                        initargs=(config.to_dict(), True))


def convert_images(jobs, config, workers):
    """Run ``(source, target)`` jobs over ``workers`` processes; returns {source: reason} of failures.

    The bytes written do not depend on the worker count.
    """
    failures = {}
    bar = tqdm(total=len(jobs), desc="images", unit="img")
    if workers <= 1:
        _init_worker(config.to_dict())
        for job in jobs:
            reason = _convert_image(job)
            if reason:
                failures[job[0]] = reason
            bar.update()
    else:
        pool = worker_pool(workers, config)
        try:
            for source, reason in zip((job[0] for job in jobs), pool.imap(_convert_image, jobs, chunksize=16)):
                if reason:
                    failures[source] = reason
                bar.update()
            pool.close()  # done: the workers exit on their own, no signal needed
        except BaseException:
            pool.terminate()  # interrupted: stop the workers now
            raise
        finally:
            pool.join()
    bar.close()
    return failures


def is_valid_array(path, shape, dtype):
    """An existing output that can be kept: a readable .npy of exactly this shape and dtype."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return array.shape == tuple(shape) and array.dtype == np.dtype(dtype)


def holds(path, expected):
    """An existing output that already holds exactly ``expected`` (values, shape and dtype)."""
    try:
        array = np.load(path)
    except (OSError, ValueError):
        return False
    return array.dtype == expected.dtype and np.array_equal(array, expected)


def remove_stale_temporaries(folder):
    """Temporary files an interrupted run left (``.{name}.*.tmp``): never outputs, always safe to drop."""
    for path in Path(folder).glob(".*.tmp"):
        path.unlink(missing_ok=True)


def check_unique_stems(names, data_dir):
    """Arrays are named by the part of the file name before its first dot, as ais_bench names its
    outputs: two images with one stem would overwrite each other's array and captions. A naming clash
    is no bad image, so it stops the run under every ``--on-error`` before anything is written."""
    clash = stem_clash(names)
    if clash:
        first, second = clash
        raise KitError(f"{Path(data_dir) / first} and {Path(data_dir) / second}: both would become "
                       f"images/{image_stem(first)}.npy (arrays are named by the part before the first dot); rename "
                       f"one of them and its lines in {ANNOTATION_FILE}")


def preprocess_dataset(data_dir, save_dir, model_name, pretrained=None, workers=None, on_error="stop", force=False,
                       dataset="flickr30k"):
    """Write the arrays and ``manifest.json`` under ``save_dir``; returns the Manifest. ``dataset``:
    flickr30k's layout or CLIP_benchmark's MSCOCO one (``dataset.DATASETS``)."""
    from ..model.loading import model_skeleton

    data_dir, save_dir = Path(data_dir), Path(save_dir)
    problems = Problems(on_error)
    manifest = read_dataset(data_dir, dataset, problems)
    check_unique_stems(manifest.images, data_dir)
    named = set(manifest.images)
    image_dir = (data_dir / manifest.images[0]).parent
    manifest.unreferenced_images = sum(1 for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                                       and str(p.relative_to(data_dir)) not in named) if image_dir.is_dir() else 0
    missing = [name for name in manifest.images if not (data_dir / name).is_file()]
    for name in missing:
        problems.report(data_dir / name, f"named in {ANNOTATION_FILE if dataset == 'flickr30k' else COCO_ANNOTATION_FILE} "
                        "but not found", "put the image where the annotation file says")
    config = preprocess_config(model_skeleton(model_name), model_name, pretrained)
    tokenizer = Tokenizer(model_name)
    height, width = config.size
    for folder in ("images", "texts"):
        (save_dir / folder).mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(save_dir / folder)

    manifest = manifest.without_images(missing)
    targets = {name: save_dir / "images" / f"{stem}.npy" for name, stem in zip(manifest.images, manifest.image_stems)}
    jobs = [(data_dir / name, target) for name, target in targets.items()
            if force or not is_valid_array(target, (1, 3, height, width), np.float32)
            or target.stat().st_mtime < (data_dir / name).stat().st_mtime]
    try:
        failures = convert_images(jobs, config, workers or default_workers())
    finally:
        remove_stale_temporaries(save_dir / "images")  # what a stopped worker was writing
    for source, reason in failures.items():
        problems.report(source, reason, "replace the file or remove its lines from the annotation file")
    failed = {str(source) for source in failures}
    manifest = manifest.without_images([name for name in manifest.images if str(data_dir / name) in failed])

    if not manifest.images or not manifest.captions:
        left = "no image" if not manifest.images else "no caption"
        raise KitError(f"{data_dir}: {left} left to evaluate ({len(problems.skipped)} items skipped: "
                       f"{problems.skipped[0]['item'] if problems.skipped else 'none'} first); fix the data folder — "
                       "recall over an empty set means nothing")
    tokens = tokenizer([caption.text for caption in manifest.captions])
    for caption, row in zip(tqdm(manifest.captions, desc="texts", unit="caption"), tokens):
        target = save_dir / "texts" / f"{caption.stem}.npy"
        if force or not holds(target, row[None]):
            save_npy(target, np.ascontiguousarray(row[None]))
    manifest.model_name = model_name
    manifest.preprocess = config.to_dict()
    manifest.context_length = tokenizer.context_length
    manifest.skipped = problems.skipped
    manifest.save(save_dir / "manifest.json")
    return manifest


def given_examples(model, model_name, pretrained=None, image=None, text=None):
    """The reference's ``--image`` / ``--text`` tracing inputs as {tower: (1, …) array}, made exactly as
    step 1 makes its arrays."""
    examples = {}
    if image:
        try:
            pixels = read_pixels(image, ImagePreprocessor(preprocess_config(model, model_name, pretrained)))
        except ValueError as exc:
            raise KitError(f"--image {image}: {exc}; pass a JPEG or PNG file") from exc
        examples["vision"] = pixels[None]
    if text:
        examples["text"] = np.ascontiguousarray(Tokenizer(model_name)([text])[:1])
    return examples
