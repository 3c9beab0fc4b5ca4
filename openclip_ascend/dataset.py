"""The flickr30k Karpathy test annotations and the manifest that ties every later step to them.

The manifest fixes the order of images and captions once, so later steps never depend on
directory-listing order or on exactly five captions per image.
"""

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .files import KitError, read_json, write_json

ANNOTATION_FILE = "flickr30k_test_karpathy.txt"
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
    context_length: int = 77

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
            context_length=data.get("context_length", 77),
        )


def image_stem(file_name):
    """ais_bench cuts a file name at its first dot; the kit names arrays the same way."""
    return Path(file_name).name.split(".", 1)[0]


def read_annotations(path):
    """Read ``flickr30k_test_karpathy.txt`` (pandas CSV, header ``image,caption``) into a Manifest."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: annotation file not found; --data-dir must hold the images and {ANNOTATION_FILE}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows or [cell.strip().lower() for cell in rows[0]] != ["image", "caption"]:
        found = rows[0] if rows else "an empty file"
        raise KitError(f"{path}: the first line must be the header 'image,caption', found {found}")
    images, index_of, captions = [], {}, []
    per_image = {}
    for line_number, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise KitError(f"{path}:{line_number}: expected 2 fields 'image,caption', found {len(row)}: {row}")
        name, text = row[0].strip(), row[1].strip()
        if name not in index_of:
            index_of[name] = len(images)
            images.append(name)
        k = per_image.get(name, 0)
        per_image[name] = k + 1
        captions.append(Caption(stem=f"{image_stem(name)}_{k}", image=index_of[name], text=text))
    if not captions:
        raise KitError(f"{path}: no captions after the header")
    return Manifest(images=images, captions=captions)
