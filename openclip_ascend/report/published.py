"""Figures others published for open_clip models (``assets/published.json``, each with its source), looked
up for a run so the report and results.json show them beside what was measured — marked published."""

import json
from pathlib import Path

from ..model.loading import ASSETS, is_random_weights

PUBLISHED = ASSETS / "published.json"


def _applies(entry, model_name, pretrained):
    """An entry applies to the same model with its tag, or with a checkpoint file (which may be that tag's:
    the report names the tag, so a reader can tell); never to random weights or another tag."""
    if entry["model"] != model_name or not pretrained or is_random_weights(pretrained):
        return False
    return pretrained == entry["pretrained"] or Path(pretrained).suffix in (".bin", ".pt", ".pth", ".safetensors")


def published_accuracy(model_name, pretrained, task, dataset, images):
    """[{source, pretrained, metrics}] published for this model on ``task`` over ``dataset`` with as many
    ``images`` as the run had: a subset's recall is not the whole set's, and one query of a smaller set would
    stretch the bound it is held to."""
    data = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    return [{key: entry[key] for key in ("source", "pretrained", "metrics")} for entry in data["accuracy"]
            if entry["task"] == task and entry["dataset"] == dataset and entry["images"] == images
            and _applies(entry, model_name, pretrained)]


def published_throughput(model_name, pretrained):
    """[{source, pretrained, fps: {batch: (vision, text)}}] published for this model."""
    data = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    return [{"source": entry["source"], "pretrained": entry["pretrained"],
             "fps": {int(batch): tuple(fps) for batch, fps in entry["fps"].items()}}
            for entry in data["throughput"] if _applies(entry, model_name, pretrained)]
