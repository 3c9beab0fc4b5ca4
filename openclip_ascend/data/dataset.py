"""The flickr30k Karpathy test annotations and the manifest that ties every later step to them.

The manifest fixes the order of images and captions once, so later steps never depend on
directory-listing order or on exactly five captions per image.
"""

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import KitError, read_json, write_json

ANNOTATION_FILE = "flickr30k_test_karpathy.txt"
# CLIP_benchmark's MSCOCO 5k Karpathy test layout: ROOT/val2014/*.jpg and ROOT/coco_test_karpathy.json
# (COCO captions format: "images" [{id, file_name}], "annotations" [{image_id, caption}])
COCO_ANNOTATION_FILE, COCO_IMAGES = "coco_test_karpathy.json", "val2014"
DATASETS = ("flickr30k", "mscoco")
MANIFEST_FORMAT = "openclip-ascend-manifest/1"


@dataclass
class Caption:
    stem: str  # file stem of the token array: "{image stem}_{k}"
    image: int  # index into Manifest.images
    text: str


@dataclass
class Manifest:
    images: list  # image file names (e.g. "1000092795.jpg"), in order of first appearance
    captions: list  # Caption, in file order
    model_name: str = ""
    preprocess: dict = field(default_factory=dict)
    context_length: int = None  # set by preprocessing from the model's tokenizer
    skipped: list = field(default_factory=list)  # [{"item", "reason"}] left out under --on-error skip
    unreferenced_images: int = 0  # images in the data folder that no caption names (ignored)

    @property
    def image_stems(self):
        return [image_stem(name) for name in self.images]

    def to_dict(self):
        return {
            "format": MANIFEST_FORMAT,
            "model_name": self.model_name,
            "preprocess": self.preprocess,
            "context_length": self.context_length,
            "images": [{"stem": stem, "file": name} for stem, name in zip(self.image_stems, self.images)],
            "captions": [asdict(caption) for caption in self.captions],
            "skipped": self.skipped,
            "unreferenced_images": self.unreferenced_images,
        }

    def save(self, path):
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path):
        data = read_json(path)
        if data.get("format") != MANIFEST_FORMAT:
            raise KitError(f"{path}: not an openclip-ascend manifest (format {data.get('format')!r}); "
                           "re-run openclip_preprocess.py to write one")
        return cls(
            images=[entry["file"] for entry in data["images"]],
            captions=[Caption(**entry) for entry in data["captions"]],
            model_name=data.get("model_name", ""),
            preprocess=data.get("preprocess", {}),
            context_length=data.get("context_length"),
            skipped=data.get("skipped", []),
            unreferenced_images=data.get("unreferenced_images", 0),
        )

    def without_images(self, names):
        """The manifest with these images and their captions left out (indices renumbered)."""
        names = set(names)
        kept = [name for name in self.images if name not in names]
        new_index = {name: i for i, name in enumerate(kept)}
        captions = [Caption(c.stem, new_index[self.images[c.image]], c.text) for c in self.captions
                    if self.images[c.image] not in names]
        return Manifest(images=kept, captions=captions, model_name=self.model_name, preprocess=self.preprocess,
                        context_length=self.context_length, skipped=self.skipped,
                        unreferenced_images=self.unreferenced_images)


def load_prepared(prep, images=0):
    """Step 1's arrays in manifest order: the first ``images`` images (0: all) and every caption of theirs.
    Returns (manifest, {"vision": images, "text": tokens}, caption → image index); a folder without a
    manifest is one line."""
    import numpy as np

    prep = Path(prep)
    path = prep / "manifest.json"
    if not path.is_file():
        raise KitError(f"{path}: not found; give the folder openclip_preprocess.py wrote")
    manifest = Manifest.load(path)
    stems = manifest.image_stems[:images] if images else manifest.image_stems
    captions = [caption for caption in manifest.captions if caption.image < len(stems)]
    arrays = {"vision": np.concatenate([np.load(prep / "images" / f"{stem}.npy") for stem in stems]),
              "text": np.concatenate([np.load(prep / "texts" / f"{caption.stem}.npy") for caption in captions])}
    return manifest, arrays, [caption.image for caption in captions]


def image_stem(file_name):
    """ais_bench cuts a file name at its first dot; the kit names arrays the same way."""
    return Path(file_name).name.split(".", 1)[0]


def stem_clash(names):
    """The first two names (files or paths) that share an ``image_stem`` — whose arrays or ais_bench
    outputs would overwrite each other — or None."""
    first = {}
    for name in names:
        stem = image_stem(name)
        if stem in first:
            return first[stem], name
        first[stem] = name
    return None


class Problems:
    """Bad input under the ``--on-error`` policy: ``stop`` raises at the first, ``skip`` records each."""

    def __init__(self, on_error="stop"):
        if on_error not in ("stop", "skip"):
            raise KitError(f"--on-error {on_error!r}: choose stop or skip")
        self.on_error = on_error
        self.skipped = []

    def report(self, item, reason, advice):
        if self.on_error == "stop":
            raise KitError(f"{item}: {reason}; {advice} (or --on-error skip / ON_ERROR=skip to leave it out and go on)")
        self.skipped.append({"item": str(item), "reason": reason})


def _decode(path, data, problems):
    """UTF-8 text of the annotation file; a line that is not UTF-8 is reported and left blank."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError as exc:
            problems.report(f"{path}:{number}", f"bytes that are not UTF-8 ({raw[exc.start:exc.start + 4]!r})",
                            "re-save the file as UTF-8")
            lines.append("")
    return "\n".join(lines)


def read_annotations(path, problems=None):
    """Read ``flickr30k_test_karpathy.txt`` (pandas CSV, header ``image,caption``) into a Manifest.

    A UTF-8 BOM and Windows line endings are accepted; bad lines go to ``problems`` (stop by default).
    """
    problems = problems or Problems()
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: annotation file not found; --data-dir must hold the images and {ANNOTATION_FILE}")
    reader = csv.reader(io.StringIO(_decode(path, path.read_bytes(), problems), newline=""))
    header = next(reader, None)
    if not header or [cell.strip().lower() for cell in header] != ["image", "caption"]:
        found = ",".join(header) if header else "an empty file"
        raise KitError(f"{path}: the first line must be the header 'image,caption', found {found!r}; "
                       "restore the header (the file as distributed has it)")
    images, index_of, captions, per_image = [], {}, [], {}
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not row or row == [""]:
            continue  # blank line (or a line blanked out above)
        if len(row) != 2:
            problems.report(where, f"expected 2 fields 'image,caption', found {len(row)}: {row}",
                            "quote captions that contain commas")
            continue
        name, text = row[0].strip(), row[1].strip()
        if not text:
            problems.report(where, f"empty caption for {name}", "write the caption or delete the line")
            continue
        if name not in index_of:
            index_of[name] = len(images)
            images.append(name)
        k = per_image.get(name, 0)
        per_image[name] = k + 1
        captions.append(Caption(stem=f"{image_stem(name)}_{k}", image=index_of[name], text=text))
    if not captions:
        raise KitError(f"{path}: no captions after the header")
    return Manifest(images=images, captions=captions, skipped=problems.skipped)


def read_coco_annotations(path):
    """CLIP_benchmark's MSCOCO annotation file into a Manifest: images in id order (as torchvision's
    CocoCaptions lists them), named ``val2014/{file_name}``, their captions in file order. An image without
    captions stays, as it does there: a distractor for every caption, and a text-retrieval miss."""
    import json

    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: annotation file not found; --data-dir must hold {COCO_IMAGES}/ and "
                       f"{COCO_ANNOTATION_FILE} (CLIP_benchmark's MSCOCO layout)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {entry["id"]: entry["file_name"] for entry in data["images"]}
        annotations = [(entry["image_id"], str(entry["caption"]).strip()) for entry in data["annotations"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise KitError(f"{path}: not a COCO captions file ({exc}); it needs \"images\" with id and file_name and "
                       "\"annotations\" with image_id and caption") from exc
    by_image = {}
    for image_id, text in annotations:
        if image_id not in files:
            raise KitError(f"{path}: a caption names image id {image_id}, which \"images\" does not list")
        by_image.setdefault(image_id, []).append(text)
    ids = sorted(files)
    images = [f"{COCO_IMAGES}/{files[image_id]}" for image_id in ids]
    captions = [Caption(stem=f"{image_stem(files[image_id])}_{k}", image=index, text=text)
                for index, image_id in enumerate(ids) for k, text in enumerate(by_image.get(image_id, []))]
    if not captions:
        raise KitError(f"{path}: no captions")
    return Manifest(images=images, captions=captions)


def read_dataset(data_dir, dataset="flickr30k", problems=None):
    """The manifest of a retrieval data set folder in its own layout (``DATASETS``)."""
    if dataset == "mscoco":
        return read_coco_annotations(Path(data_dir) / COCO_ANNOTATION_FILE)
    if dataset != "flickr30k":
        raise KitError(f"--dataset {dataset!r}: choose {' or '.join(DATASETS)}")
    return read_annotations(Path(data_dir) / ANNOTATION_FILE, problems)
