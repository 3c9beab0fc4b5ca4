#!/usr/bin/env python3
"""Step 1's image path against open_clip's own transform, in one run, bit for bit.

    python bench/bench_preprocess.py [--images 200] [--workers 1,2] [--results-file bench/results/preprocess.json]

Writes flickr-sized JPEGs (500×375) to a temporary folder, then times: the serial open_clip
transform (open, transform, .npy write per image) and this kit's preprocessing at each worker count
(same work, LUT normalisation, worker processes), checks every array is identical, and prints
images/s and ratios to the serial open_clip figure.
"""

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openclip_ascend.cli import csv_ints  # noqa: E402
from openclip_ascend.data.preprocess import convert_images  # noqa: E402
from openclip_ascend.data.sample import random_scenes  # noqa: E402
from openclip_ascend.data.transforms import preprocess_config  # noqa: E402
from openclip_ascend.files import write_json  # noqa: E402
from openclip_ascend.markdown import markdown_table  # noqa: E402
from openclip_ascend.model.loading import model_skeleton  # noqa: E402


def write_jpegs(folder, count):
    folder.mkdir(parents=True)
    paths = []
    for index, scene in enumerate(random_scenes(count, seed=99)):
        flickr_sized = dataclasses.replace(scene, width=500, height=375)
        path = folder / f"{index}.jpg"
        flickr_sized.render().save(path, quality=90)
        paths.append(path)
    return paths


def open_clip_serial(paths, out_dir, transform):
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        with Image.open(path) as img:
            np.save(out_dir / f"{path.stem}.npy", transform(img).numpy()[None])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--results-file", default="bench/results/preprocess.json")
    args = parser.parse_args()

    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    model = model_skeleton(args.model_name)  # the configuration is all it needs
    config = preprocess_config(model)
    transform = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(model)), is_train=False)
    work = Path(tempfile.mkdtemp(prefix="bench_pre_"))
    paths = write_jpegs(work / "jpg", args.images)

    start = time.perf_counter()
    open_clip_serial(paths, work / "open_clip", transform)
    baseline = args.images / (time.perf_counter() - start)
    rows, records = [["open_clip transform, serial", 1, f"{baseline:.0f}", "1.00", "reference"]], []
    for workers in csv_ints(args.workers):
        out = work / f"kit_{workers}"
        jobs = [(path, out / f"{path.stem}.npy") for path in paths]
        start = time.perf_counter()
        convert_images(jobs, config, workers)
        rate = args.images / (time.perf_counter() - start)
        identical = all((out / f"{p.stem}.npy").read_bytes() == (work / "open_clip" / f"{p.stem}.npy").read_bytes()
                        for p in paths)
        rows.append([f"openclip-ascend, {workers} worker(s)", workers, f"{rate:.0f}", f"{rate / baseline:.2f}",
                     "bit-identical" if identical else "DIFFERENT"])
        records.append({"workers": workers, "images_per_s": rate, "ratio": rate / baseline, "identical": identical})
    table = markdown_table(["preprocessing", "processes", "images/s", "÷ open_clip serial", "arrays"], rows)
    print(table)
    write_json(args.results_file, {"images": args.images, "open_clip_serial_images_per_s": baseline,
                                   "kit": records})
    Path(args.results_file).with_suffix(".md").write_text(
        f"{args.images} JPEGs of 500×375, {args.model_name} preprocessing (worker start-up included)\n\n{table}\n",
        encoding="utf-8")
    if not all(record["identical"] for record in records):
        sys.exit(1)


if __name__ == "__main__":
    main()
