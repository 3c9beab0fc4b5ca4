"""Step 5: read ais_bench-layout embedding folders, pair them with the captions, compute recall@k."""

from pathlib import Path

import numpy as np

from ..agreement import compare_embeddings
from ..data.dataset import Caption, Manifest
from ..files import KitError, natural_key
from .metrics import DEFAULT_RECALL_K, evaluate_retrieval

OUTPUT_SUFFIX = "_0"  # ais_bench names output 0 of input X.npy "X_0.npy"


def _read_output(path):
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".bin":
        return np.fromfile(path, dtype=np.float32)  # ais_bench writes the raw float32 output
    return np.loadtxt(path, dtype=np.float32, ndmin=2)


def read_embedding_dir(folder):
    """{input stem: (D,) float32} from an ais_bench output folder, ``device{N}/`` subfolders included.

    Summary files (``sumary.json`` inside, ``*_summary.json`` beside) are not outputs and are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise KitError(f"{folder}: embedding folder not found; point it at ais_bench's --output/--output_dirname")
    embeddings, sources = {}, {}
    for path in sorted(folder.rglob("*_0.*"), key=lambda p: natural_key(p.name)):
        if path.suffix not in (".npy", ".bin", ".txt"):
            continue
        stem = path.name.split(".", 1)[0][: -len(OUTPUT_SUFFIX)]
        if stem in sources:
            raise KitError(f"{sources[stem]} and {path}: two outputs for input {stem!r} (another run's format or "
                           "device split left one behind); empty the folder and re-run inference")
        sources[stem] = path
        embeddings[stem] = _read_output(path).reshape(-1)
    if not embeddings:
        raise KitError(f"{folder}: no ais_bench outputs (*_0.npy / *_0.bin) found; run the inference step first")
    return embeddings


def manifest_from_names(image_embeds, text_embeds):
    """Without a manifest, pair as the reference did: caption ``{stem}_{k}`` belongs to image ``{stem}``."""
    stems = sorted(image_embeds, key=natural_key)
    index = {stem: i for i, stem in enumerate(stems)}
    captions = []
    for caption_stem in sorted(text_embeds, key=natural_key):
        owner = caption_stem.rsplit("_", 1)[0]
        if owner not in index:
            raise KitError(f"text output {caption_stem}_0: no image output {owner}_0 to pair it with; "
                           "pass --manifest to pair through the preprocessing manifest")
        captions.append(Caption(stem=caption_stem, image=index[owner], text=""))
    return Manifest(images=stems, captions=captions)


def _gather(embeddings, stems, kind, folder):
    missing = [stem for stem in stems if stem not in embeddings]
    if missing:
        raise KitError(f"{folder}: {len(missing)} of {len(stems)} {kind} outputs missing (first: {missing[0]}_0); "
                       "re-run inference on the full input folder")
    broken = [stem for stem in stems if not np.isfinite(embeddings[stem]).all()]
    if broken:
        raise KitError(f"{folder}: {len(broken)} {kind} outputs hold NaN or Inf (first: {broken[0]}_0); no recall is "
                       "computed from them — check the model's precision (e.g. fp16 overflow) and re-run inference")
    widths = {embeddings[stem].shape[0] for stem in stems}
    if len(widths) != 1:
        raise KitError(f"{folder}: {kind} outputs have different widths {sorted(widths)}; they come from different models")
    return np.stack([embeddings[stem] for stem in stems])


def evaluate_folders(vision_dir, text_dir, manifest_path=None, ks=DEFAULT_RECALL_K, read=read_embedding_dir):
    """recall@k of two ais_bench output folders; returns (RetrievalResult, counts). ``read`` may be a
    cached ``read_embedding_dir`` when the same folders are also compared with ``embedding_agreement``."""
    image_embeds = read(vision_dir)
    text_embeds = read(text_dir)
    manifest = Manifest.load(manifest_path) if manifest_path else manifest_from_names(image_embeds, text_embeds)
    images = _gather(image_embeds, manifest.image_stems, "image", vision_dir)
    texts = _gather(text_embeds, [caption.stem for caption in manifest.captions], "text", text_dir)
    if images.shape[1] != texts.shape[1]:
        raise KitError(f"embedding widths differ: {vision_dir} has {images.shape[1]}, {text_dir} has "
                       f"{texts.shape[1]}; the two towers must come from the same model")
    result = evaluate_retrieval(images, texts, [caption.image for caption in manifest.captions], ks)
    extra = (len(image_embeds) - len(images)) + (len(text_embeds) - len(texts))
    return result, {"images": len(images), "captions": len(texts), "skipped_in_preprocessing": len(manifest.skipped),
                     "extra_outputs_ignored": extra}


def embedding_agreement(reference_dir, candidate_dir, read=read_embedding_dir):
    """How close one backend's embeddings are to the reference's, output file by output file."""
    reference, candidate = read(reference_dir), read(candidate_dir)
    stems = sorted(reference, key=natural_key)
    missing = [stem for stem in stems if stem not in candidate]
    if missing:
        raise KitError(f"{candidate_dir}: {len(missing)} outputs missing against {reference_dir} (first: {missing[0]}_0)")
    return compare_embeddings(np.stack([reference[s] for s in stems]), np.stack([candidate[s] for s in stems]))


def tie_note(result):
    """One line on the figures exact ties lowered: how many queries, and the optimistic value (None when
    ties changed nothing)."""
    if not result.ties:
        return None
    parts = [f"{key} {result.metrics[key]:.4f} ({tie['optimistic']:.4f} if they went to the positive; "
             f"{tie['queries']} of {result.queries[key]} queries)" for key, tie in result.ties.items()]
    return "exact ties, counted against the positive, lower " + ", ".join(parts)


def degenerate_warning(problems, where):
    """The loud line for embeddings no working model produces (None when ``problems`` is empty)."""
    if not problems:
        return None
    return (f"WARNING: accuracy check FAILED for {where}: degenerate embeddings ({'; '.join(problems)}). "
            "A collapsed model's figures mean nothing; check the OM's precision mode (fp16 overflow) and the inputs")


METRICS_NOTE = ("metrics: exact fractions hits/queries, exact ties counted against the positive; metrics_float32: "
                "the same as the reference's Metrics line prints them (torch float32 means)")


def retrieval_record(result, counts):
    """What step 5 and ``--results-file`` keep of one evaluation (JSON-ready)."""
    return {"metrics": result.metrics, "metrics_float32": result.metrics_float32, "ties": result.ties,
            "check": "failed" if result.degenerate else "passed", "problems": result.problems, **counts,
            "note": METRICS_NOTE}


def failed_checks(accuracy):
    """``backend bsN`` of every step-5 entry whose check failed (degenerate embeddings)."""
    return [f"{entry['backend']} bs{entry['batch_size']}" for entry in accuracy or [] if entry.get("check") == "failed"]
