"""A flickr-style sample set the kit makes itself: synthetic scenes and five captions each.

Each image is one coloured shape of some size at one of nine positions on a plain background, in
varied image sizes and aspect ratios; captions name those attributes in five templates, some with
commas, quotes and an HTML entity so the CSV quoting and the tokenizer's cleaning are exercised.
The shape always lies inside the central square, so open_clip's center crop keeps it.
"""

import csv
import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ..files import atomic_path, write_text
from .dataset import ANNOTATION_FILE

COLORS = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 225), "yellow": (240, 215, 40),
    "purple": (135, 45, 170), "orange": (250, 135, 20), "white": (246, 246, 246), "black": (12, 12, 12),
}
BACKGROUNDS = {
    "gray": (128, 128, 128), "pink": (245, 175, 200), "teal": (20, 128, 128),
    "brown": (120, 75, 40), "lavender": (190, 180, 235), "mint": (170, 235, 200),
}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
SIZES = ("small", "large")
IMAGE_SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (400, 400), (640, 427), (281, 500), (500, 281))

TEMPLATES = (
    "a {size} {color} {shape} in the {position}.",
    "{color} {shape} on a {background} background",
    "A {shape}, coloured {color}, sits at the {position}.",
    'the {background} picture shows a "{size}" {color} {shape}',
    "{color} {shape} &amp; {background} backdrop, {position}",
)

CLASSIFICATION_TEMPLATES = ("a {c} shape.", "{c} shape on a background", "a {c} thing")
CLASSIFICATION_TEMPLATES_FILE = "templates.txt"


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    position: str
    size: str
    background: str
    width: int
    height: int
    marks: tuple = ()  # small grey dots ((x, y) fractions of the image): makes every image distinct

    def captions(self):
        fields = dict(color=self.color, shape=self.shape, position=self.position, size=self.size,
                      background=self.background)
        return [template.format(**fields) for template in TEMPLATES]

    def render(self):
        img = Image.new("RGB", (self.width, self.height), BACKGROUNDS[self.background])
        side = min(self.width, self.height)
        left0, top0 = (self.width - side) // 2, (self.height - side) // 2
        row, col = divmod(POSITIONS.index(self.position), 3)
        cell = side / 3
        cx, cy = left0 + (col + 0.5) * cell, top0 + (row + 0.5) * cell
        r = cell * (0.45 if self.size == "large" else 0.3)
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLORS[self.color]
        draw = ImageDraw.Draw(img)
        for fx, fy in self.marks:
            x, y = fx * self.width, fy * self.height
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(100, 100, 100))
        if self.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif self.shape == "square":
            draw.rectangle(box, fill=fill)
        elif self.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        else:
            t = r / 3
            draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
            draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
        return img


def random_scene(rng):
    width, height = rng.choice(IMAGE_SIZES)
    return Scene(color=rng.choice(sorted(COLORS)), shape=rng.choice(SHAPES), position=rng.choice(POSITIONS),
                 size=rng.choice(SIZES), background=rng.choice(sorted(BACKGROUNDS)), width=width, height=height)


def random_scenes(count, seed):
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(count)]


# Plain phrases (no commas or quotes, so every reader of the annotation file, CLIP_benchmark's ".jpg,"
# split included, reads the same text) that stretch a caption to flickr30k's lengths.
CLAUSES = (
    "while two people walk past", "next to a wooden bench", "under a bright afternoon sky", "near the edge of the frame",
    "as a dog runs through the grass", "beside an old brick wall", "with a crowd watching from the street",
    "in front of a small shop", "on a quiet morning", "while a man in a blue shirt looks on",
    "and a child holds a balloon", "close to a parked bicycle", "during a busy festival", "behind a metal fence",
    "where the light falls softly", "with trees in the background", "as the rain starts to fall",
    "next to a woman carrying groceries", "in the middle of a city square", "while music plays nearby",
)
# flickr30k's 1k Karpathy test captions: ~13 words on average (the EOT at token 15.5, p90 19, max 45)
FLICKR_WORDS_MEDIAN, FLICKR_WORDS_SIGMA, FLICKR_WORDS_RANGE = 12, 0.35, (5, 40)


def flickr_captions(scene, rng):
    """Five captions of flickr30k-like lengths: the scene named briefly, then plain clauses up to a
    length drawn from a log-normal around 12 words."""
    captions = []
    for template in TEMPLATES[:2] + ("a {color} {shape}", "{size} {color} {shape} at the {position}",
                                     "a {background} scene with a {color} {shape}"):
        words = template.format(color=scene.color, shape=scene.shape, position=scene.position, size=scene.size,
                                background=scene.background).rstrip(".").split()
        low, high = FLICKR_WORDS_RANGE
        target = min(high, max(low, round(rng.lognormvariate(math.log(FLICKR_WORDS_MEDIAN), FLICKR_WORDS_SIGMA))))
        while len(words) < target:
            words += rng.choice(CLAUSES).split()
        captions.append(" ".join(words[:max(target, 3)]))
    return captions


def write_sample_dir(out_dir, count=100, seed=1234, first_id=1000, flickr_like=False):
    """Write ``count`` JPEGs named like flickr30k (``1000.jpg``, …) and the annotation CSV.

    ``flickr_like``: flickr30k's shape instead of the demo's variety — every image 500×375 and distinct
    (a few dots), captions of flickr30k's lengths without punctuation, none repeated."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, seen = [], set()
    rng = random.Random(seed + 1)
    for offset, scene in enumerate(random_scenes(count, seed)):
        name = f"{first_id + offset}.jpg"
        captions = scene.captions()
        if flickr_like:
            scene = dataclasses.replace(scene, width=500, height=375,
                                        marks=tuple((rng.random(), rng.random()) for _ in range(3)))
            captions = flickr_captions(scene, rng)
            while seen.intersection(captions) or len(set(captions)) < len(captions):
                captions = flickr_captions(scene, rng)
            seen.update(captions)
        with atomic_path(out_dir / name) as tmp:
            scene.render().save(tmp, format="JPEG", quality=90)
        rows.extend((name, caption) for caption in captions)
    with atomic_path(out_dir / ANNOTATION_FILE) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")  # quotes as pandas does: minimal, doubled quotes
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    return out_dir


def write_classification_dir(out_dir, count=80, seed=4321):
    """An image-folder classification set from the same scenes: ``ROOT/<colour>/<id>.jpg``, the
    shape's colour as the class (8 classes), with its prompt templates in ``ROOT/templates.txt``
    (phrased as the sample's captions are; a file, so not a class)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / CLASSIFICATION_TEMPLATES_FILE, "\n".join(CLASSIFICATION_TEMPLATES) + "\n")
    for offset, scene in enumerate(random_scenes(count, seed)):
        folder = out_dir / scene.color
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"{offset}.jpg") as tmp:
            scene.render().save(tmp, format="JPEG", quality=90)
    return out_dir


def write_coco_sample_dir(out_dir, count=100, seed=1234, first_id=391895):
    """The sample set in CLIP_benchmark's MSCOCO layout: ``val2014/COCO_val2014_{id:012d}.jpg`` and
    ``coco_test_karpathy.json`` (COCO captions format), the same scenes and captions as
    ``write_sample_dir``."""
    import json

    from .dataset import COCO_ANNOTATION_FILE, COCO_IMAGES

    out_dir = Path(out_dir)
    (out_dir / COCO_IMAGES).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for offset, scene in enumerate(random_scenes(count, seed)):
        image_id = first_id + 7 * offset
        name = f"COCO_val2014_{image_id:012d}.jpg"
        with atomic_path(out_dir / COCO_IMAGES / name) as tmp:
            scene.render().save(tmp, format="JPEG", quality=90)
        images.append({"id": image_id, "file_name": name, "width": scene.width, "height": scene.height})
        annotations += [{"image_id": image_id, "id": len(annotations) + 1, "caption": caption}
                        for caption in scene.captions()]
    with atomic_path(out_dir / COCO_ANNOTATION_FILE) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"images": images[::-1], "annotations": annotations}, handle)  # not in id order: the reader sorts
    return out_dir
