"""Zero-shot classification through the same towers and runner, with CLIP_benchmark's definitions.

The classifier is built as CLIP_benchmark's ``zero_shot_classifier`` builds it: per class, every
template's text embedding normalised, averaged, normalised again. Metrics as its ``evaluate``:
``acc1`` and ``acc5`` (top-k over the logits; acc5 is NaN with fewer than 5 classes) and
``mean_per_class_recall`` (balanced accuracy: the mean over classes present of each class's recall).
A class whose score ties with the true class counts against it, so no figure is above what any order
of the tie would give (with untied scores this is exactly CLIP_benchmark's topk).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import KitError, read_json, save_npy, write_json
from ..model.loading import ASSETS
from .metrics import normalised

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")
BUILTIN = ASSETS / "zeroshot_datasets.json"
DEFAULT_TEMPLATES = ["a photo of a {c}."]


@dataclass
class ClassificationSet:
    classnames: list
    templates: list
    files: list  # image paths
    labels: list  # class index per file


def builtin(dataset):
    data = json.loads(BUILTIN.read_text(encoding="utf-8"))
    if dataset not in data or dataset == "source":
        raise KitError(f"--dataset {dataset!r}: built in are imagenet1k, cifar10 and cifar100; for another give "
                       "--classnames FILE --templates FILE")
    return data[dataset]["classnames"], data[dataset]["templates"]


def read_lines(path, what):
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise KitError(f"--{what} {path}: cannot be read ({exc.strerror})") from exc
    if not lines:
        raise KitError(f"--{what} {path}: empty; write one entry per line")
    return lines


def read_image_folder(root):
    """``ROOT/<class folder>/*.jpg``: folders sorted by name are the labels 0..C-1 (torchvision's
    ImageFolder order); returns (folder names, files, labels)."""
    root = Path(root)
    if not root.is_dir():
        raise KitError(f"--data-dir {root}: not a folder; give ROOT with one sub-folder of images per class")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))  # .ipynb_checkpoints
    files, labels, empty = [], [], []
    for label, folder in enumerate(folders):
        images = sorted(p for p in (root / folder).iterdir() if p.suffix in IMAGE_SUFFIXES)
        files += images
        labels += [label] * len(images)
        if not images:
            empty.append(folder)
    if not files:
        raise KitError(f"--data-dir {root}: no class folders with images (ROOT/<class>/*.jpg)")
    if empty:  # an image-less class would still get a prompt and change everyone's accuracy
        raise KitError(f"{root}: class folders without images: {', '.join(empty[:5])}"
                       f"{f' and {len(empty) - 5} more' if len(empty) > 5 else ''}; put images in them or move them "
                       "out of the data folder (hidden folders are ignored)")
    return folders, files, labels


def load_set(data_dir, dataset=None, classnames_file=None, templates_file=None):
    """The images, labels, class names and templates: a built-in data set's names and templates, or
    the given files (one class name per line in label order; one ``{c}`` template per line), or the
    folder names with ``a photo of a {c}.``"""
    folders, files, labels = read_image_folder(data_dir)
    classnames, templates = builtin(dataset) if dataset else (None, None)
    if classnames_file:
        classnames = read_lines(classnames_file, "classnames")
    if templates_file:
        templates = read_lines(templates_file, "templates")
    classnames = classnames or [folder.replace("_", " ") for folder in folders]
    templates = templates or DEFAULT_TEMPLATES
    if len(classnames) != len(folders):
        raise KitError(f"{len(classnames)} class names for {len(folders)} class folders in {data_dir}; give one name "
                       "per folder, in the folders' sorted order")
    bad = [template for template in templates if "{c}" not in template]
    if bad:
        raise KitError(f"template {bad[0]!r} has no {{c}} for the class name")
    return ClassificationSet(classnames, templates, files, labels)


def prompts(classnames, templates):
    """Every class × template prompt, class-major (CLIP_benchmark's order)."""
    return [template.format(c=name) for name in classnames for template in templates]


def classifier(text_embeds, classes, templates_per_class):
    """(C, D): per class the templates' embeddings normalised, averaged, normalised (as F.normalize does: a zero
    row stays zero, so its class ties with every other rather than turning NaN and winning every comparison)."""
    embeds = np.asarray(text_embeds, dtype=np.float32).reshape(classes, templates_per_class, -1)
    return normalised(normalised(embeds).mean(axis=1))


def classify(image_embeds, weights, labels):
    """CLIP_benchmark's metrics from the logits ``image_embeds @ weights.T``; ties count against the
    true class. Returns (metrics, tied images)."""
    logits = normalised(np.asarray(image_embeds, dtype=np.float32)) @ weights.T
    labels = np.asarray(labels)
    true = logits[np.arange(len(labels)), labels][:, None]
    above = (logits > true).sum(axis=1)
    tied = (logits == true).sum(axis=1) - 1
    rank = above + tied  # pessimistic: every tie ahead of the true class
    classes = weights.shape[0]
    metrics = {"acc1": float((rank < 1).mean()),
               "acc5": float((rank < 5).mean()) if classes >= 5 else float("nan"),
               "mean_per_class_recall": float(np.mean([(rank[labels == c] < 1).mean()
                                                       for c in range(classes) if (labels == c).any()]))}
    return metrics, int((tied > 0).sum())


def result_record(dataset, model_name, pretrained, metrics, **extra):
    """CLIP_benchmark's result file (``dataset``, ``model``, ``pretrained``, ``task``, ``metrics``,
    ``language``), plus what the kit adds."""
    return {"dataset": dataset, "model": model_name, "pretrained": pretrained, "task": "zeroshot_classification",
            "metrics": metrics, "language": "en", **extra}


def accuracy_line(record):
    """``zero-shot cifar10: acc1 …, acc5 …, mean per-class recall …`` with what the figures rest on."""
    metrics, tied = record["metrics"], record["tied_images"]
    line = (f"zero-shot {record['dataset']}: acc1 {metrics['acc1']:.4f}, acc5 {metrics['acc5']:.4f}, mean per-class "
            f"recall {metrics['mean_per_class_recall']:.4f} ({record['images']} images, {record['classes']} classes, "
            f"{record['backend']} bs{record['batch_size']})")
    if tied:
        line += f"; {tied} images tie their true class with another (counted as misses)"
    return line


def report_accuracy(record):
    """The accuracy line on stdout and, for degenerate embeddings, step 5's warning on stderr."""
    import sys

    from .postprocess import degenerate_warning

    print(accuracy_line(record))
    warning = degenerate_warning(record["problems"], f"{record['backend']} bs{record['batch_size']}")
    if warning:
        print(warning, file=sys.stderr)


def write_prepared(out_dir, data, dataset, model_name, pretrained=None, workers=None):
    """Step 1 for classification: ``images/{label}_{stem}.npy`` as step 1 makes them, ``prompts/{c}_{t}.npy``
    token rows, ``zeroshot.json`` (data set, model, classes, templates, each image's stem and label).
    Returns the record's counts."""
    from ..data.dataset import image_stem
    from ..data.preprocess import convert_images, default_workers
    from ..data.transforms import Tokenizer, preprocess_config
    from ..model.loading import default_pretrained, model_skeleton

    out_dir, pretrained = Path(out_dir), default_pretrained(model_name, pretrained)
    config = preprocess_config(model_skeleton(model_name), model_name, pretrained)
    stems = [f"{label}_{image_stem(path.name)}" for path, label in zip(data.files, data.labels)]
    if len(set(stems)) != len(stems):
        raise KitError("two images of one class share a name before the suffix; rename one")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    failures = convert_images([(str(path), str(out_dir / "images" / f"{stem}.npy"))
                               for path, stem in zip(data.files, stems)], config, workers or default_workers())
    if failures:
        source, reason = next(iter(failures.items()))
        raise KitError(f"{source}: {reason}")
    tokens = Tokenizer(model_name)(prompts(data.classnames, data.templates))
    (out_dir / "prompts").mkdir(parents=True, exist_ok=True)
    per_class = len(data.templates)
    for index, row in enumerate(tokens):
        save_npy(out_dir / "prompts" / f"{index // per_class}_{index % per_class}.npy", row[None])
    write_json(out_dir / "zeroshot.json", {
        "dataset": str(dataset), "model": model_name, "pretrained": pretrained, "classnames": data.classnames,
        "templates": data.templates, "images": [{"stem": s, "label": int(lbl)} for s, lbl in zip(stems, data.labels)]})
    return {"dataset": str(dataset), "images": len(stems), "classes": len(data.classnames), "prompts": len(tokens)}


def evaluate_prepared(prep_dir, vision_dir, text_dir, backend=None, batch_size=None, read=None):
    """Step 5 for classification, from step 4's two output folders over the prepared set: CLIP_benchmark's
    result record (its metrics), plus the images whose true class ties another and the degeneracy check
    step 5 applies to retrieval (a collapsed model's identical embeddings). ``read``: a cached
    ``read_embedding_dir``."""
    from .metrics import degeneracy
    from .postprocess import read_embedding_dir

    read = read or read_embedding_dir
    meta = read_json(Path(prep_dir) / "zeroshot.json")
    images, texts = read(vision_dir), read(text_dir)
    classes, per_class = len(meta["classnames"]), len(meta["templates"])
    try:
        text = np.stack([texts[f"{c}_{t}"] for c in range(classes) for t in range(per_class)])
        image = np.stack([images[entry["stem"]] for entry in meta["images"]])
    except KeyError as exc:
        raise KitError(f"no embedding for {exc.args[0]} in {vision_dir} / {text_dir}; run both towers over "
                       f"{prep_dir}/images and {prep_dir}/prompts") from exc
    if not (np.isfinite(image).all() and np.isfinite(text).all()):
        raise KitError(f"{vision_dir} / {text_dir}: embeddings hold NaN or Inf; no accuracy is computed from them — "
                       "check the model's precision (e.g. fp16 overflow) and re-run inference")
    weights = classifier(text, classes, per_class)
    metrics, tied = classify(image, weights, [entry["label"] for entry in meta["images"]])
    problems = degeneracy(image, weights, image @ weights.T)
    return result_record(meta["dataset"], meta["model"], meta["pretrained"], metrics, backend=backend,
                         batch_size=batch_size, images=len(image), classes=classes, templates=per_class,
                         tied_images=tied, check="failed" if problems else "passed", problems=problems)


def _sessions(backend, model_name, pretrained, out_dir, batch_size, onnx_prefix=None, om_prefix=None, device=0):
    """{tower: a function opening its session} for ``backend``."""
    import functools

    from ..run.sessions import AscendSession, OnnxRuntimeSession, TorchSession

    if backend == "torch":
        return {tower: functools.partial(TorchSession, model_name, pretrained, tower) for tower in ("vision", "text")}
    if backend == "ascend":
        from ..ascend.atc import required_om

        advice = f"compile it with convert/onnx2om.py --batch-sizes {batch_size}"
        return {tower: functools.partial(AscendSession, required_om(om_prefix, tower, f"bs{batch_size}", advice), device)
                for tower in ("vision", "text")}
    from ..model.export import export_model, export_text_lengths, onnx_path
    from ..model.loading import onnx_prefix as default_prefix
    from ..model.text_lengths import DYNAMIC_LENGTH, text_graph
    from ..model.towers import trims_exactly

    prefix = Path(onnx_prefix or default_prefix(out_dir, model_name))
    if not all(onnx_path(prefix, tower).is_file() for tower in ("vision", "text")):
        from ..model.loading import load_model

        model = load_model(model_name, pretrained)
        export_model(model, prefix)
        if trims_exactly(model):  # prompts are short: each batch runs only as far as its longest
            export_text_lengths(model, prefix, [DYNAMIC_LENGTH])
    text = text_graph(DYNAMIC_LENGTH) if onnx_path(prefix, text_graph(DYNAMIC_LENGTH)).is_file() else "text"
    return {"vision": functools.partial(OnnxRuntimeSession, onnx_path(prefix, "vision")),
            "text": functools.partial(OnnxRuntimeSession, onnx_path(prefix, text))}


def run_zeroshot(data, dataset, model_name, pretrained, backend, out_dir, results_file, batch_size=8,
                 onnx_prefix=None, om_prefix=None, device=0, workers=None):
    """Prepare, run both towers, classify; writes ``results_file`` and returns its record."""
    from ..model.loading import default_pretrained
    from ..run.runner import infer_opened

    pretrained = default_pretrained(model_name, pretrained)
    out_dir = Path(out_dir)
    prep = out_dir / "prep"
    write_prepared(prep, data, dataset, model_name, pretrained, workers)
    sessions = _sessions(backend, model_name, pretrained, out_dir, batch_size, onnx_prefix, om_prefix, device)
    infer_dir = out_dir / "infer" / f"{backend}_bs{batch_size}"
    for tower, folder in (("vision", "images"), ("text", "prompts")):
        infer_opened(sessions[tower], input=str(prep / folder), output=str(infer_dir), output_dirname=tower,
                     outfmt="NPY", batchsize=batch_size)
    record = evaluate_prepared(prep, infer_dir / "vision", infer_dir / "text", backend, batch_size)
    write_json(results_file, record)
    report_accuracy(record)
    return record
