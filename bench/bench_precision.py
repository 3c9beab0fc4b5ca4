#!/usr/bin/env python3
"""openclip_precision.py locate and search at the scale users run them: time and peak memory per model
size, and the planted fp16 overflow found and fixed on a full-size model, in one run.

    python bench/bench_precision.py [--models openclip-ascend-tiny,ViT-B-32,ViT-L-14] [--towers vision,text]
        [--images 16] [--samples 16] [--planted openclip-ascend-tiny,ViT-B-32]
        [--baseline REV --baseline-models openclip-ascend-tiny,ViT-B-32] [--work DIR]
        [--results-file bench/results/precision.json]

Every measurement is a child process (this script with --child) that runs what the command runs after
its export — ``prepare`` and ``run_locate`` or ``run_search`` (locate, then the search) — on graphs
exported once per model by an export child (reported apart: the command adds it, and its peak, before
either). Time is the child's wall clock; memory its peak resident set (wait4's ru_maxrss), imports
included. Weights are random (seed 0, ``--pretrained none``; the tiny model's bundled ones), the data
the sample generator's ``--images`` images with five captions each, preprocessed for each model.
``--samples``: the inputs locate compares (the command's default 16); search evaluates keep sets on
the whole set. ``--baseline REV``: the same children on the kit at git revision REV (``git archive``
of openclip_ascend), side by side, for ``--baseline-models`` (models whose baseline fits in memory).

The planted case (K1): the stem (patch filters, class and position embeddings) scaled so that ln_pre's
input peaks at STEM_PEAK — fp16 holds that, but not ln_pre's squares (its variance path overflows to
inf) — while fp32 computes the same function (LayerNorm is scale-free). locate must name a node in
ln_pre as the first jump (an overflow) and search must keep nodes inside ln_pre only, bringing recall@5
back to within one query of fp32.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEM_PEAK = 2000.0  # fp16 holds ±65504: 2000 is exact to 1, 2000² is not representable
RECALL_KEYS = ("image_retrieval_recall@5", "text_retrieval_recall@5")


# --- children: what the command runs, one measurement each ---------------------------------------

def plant_stem(model, images):
    """Scale the stem so that ln_pre's input peaks at STEM_PEAK on ``images``; returns the factor."""
    import torch

    visual = model.visual
    with torch.no_grad():
        tokens = visual.conv1(torch.from_numpy(images)).flatten(2).transpose(1, 2)
        tokens = torch.cat([visual.class_embedding.expand(len(tokens), 1, -1), tokens], 1) + visual.positional_embedding
        factor = STEM_PEAK / float(tokens.abs().max())
        for weight in (visual.conv1.weight, visual.class_embedding, visual.positional_embedding):
            weight.mul_(factor)
    return factor


def kit_module(name, flat_name):
    """``openclip_ascend.<name>``, or where a ``--baseline`` revision predates the package folders (before
    b109309), the module as it was named then."""
    import importlib

    try:
        return importlib.import_module(f"openclip_ascend.{name}")
    except ModuleNotFoundError:
        return importlib.import_module(f"openclip_ascend.{flat_name}")


def child_export(args):
    import torch

    load_prepared = kit_module("data.dataset", "dataset").load_prepared
    export_model = kit_module("model.export", "export").export_model
    loading = kit_module("model.loading", "models")
    default_pretrained, load_model = loading.default_pretrained, loading.load_model

    torch.manual_seed(0)
    tiny = args.model == "openclip-ascend-tiny"
    model = load_model(args.model, default_pretrained(args.model, None) if tiny else None)
    facts = {}
    if args.plant:
        facts["stem_factor"] = plant_stem(model, load_prepared(args.prep)[1]["vision"])
    export_model(model, args.prefix, check=False)
    return facts


def child_run(args):
    """locate or search as the command runs them; returns the verdicts."""
    import csv

    precision = kit_module("evaluate.precision", "precision")
    prepare, run_locate, run_search = precision.prepare, precision.run_locate, precision.run_search

    job = prepare(args.prefix, args.prep, args.tower, args.out)
    if args.child == "locate":
        run_locate(job, args.samples)
    else:
        run_search(job, args.samples, 0.002, 0.99)
    rows = list(csv.DictReader(open(Path(args.out) / f"node_errors_{args.tower}.csv")))
    jumps = [row for row in rows if row["jump"] == "1"]
    contained = [row["node"] for row in rows if row.get("contained") == "1"]
    facts = {"nodes": len(rows), "jumps": len(jumps), "contained": len(contained), "contained_nodes": contained[:3],
             "first_jump": ({key: jumps[0].get(key) for key in ("node", "scope", "overflow", "why")} if jumps else None),
             "last_node": {key: rows[-1][key] for key in ("node", "max_rel_error", "min_cosine")}}
    if args.child == "search":
        record = json.loads((Path(args.out) / f"precision_{args.tower}.json").read_text())
        facts.update({key: record[key] for key in ("found", "keep", "keep_scopes", "fp32", "fp16", "kept",
                                                   "fp16_min_cosine", "kept_min_cosine", "evaluations")})
    return facts


def child_main(args):
    sys.path.insert(0, str(args.kit))
    facts = child_export(args) if args.child == "export" else child_run(args)
    Path(args.facts).write_text(json.dumps(facts))


# --- the parent: runs and measures the children ------------------------------------------------

def measured(child, kit, facts, **options):
    """(seconds, peak RSS in bytes, facts) of one child run; its stderr (progress bars) goes to a file
    beside ``facts`` and is shown when it fails."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", child, "--kit", str(kit), "--facts", str(facts)]
    for key, value in options.items():
        if value is not None and value is not False:
            command += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    log = Path(facts).with_suffix(".log")
    with open(log, "w") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{child} failed ({' '.join(command)}):\n{log.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss * 1024, json.loads(Path(facts).read_text())


def verdict(action, facts):
    """One line: what locate or search concluded."""
    jump, last = facts["first_jump"], facts["last_node"]
    located = (f"first jump `{jump['node']}`{' (overflow)' if jump['overflow'] == '1' else ''}" if jump else
               f"no jump (last node: relative error {float(last['max_rel_error']):.2g}, cosine {last['min_cosine']})"
               ) + (f"; {facts['contained']} contained" if facts["contained"] else "")
    if action == "locate":
        return located
    if not facts["found"]:
        return "no keep set within bounds"
    if not facts["keep"]:
        return "nothing to keep"
    return f"keep {len(facts['keep'])} nodes in {', '.join(facts['keep_scopes'])}"


def proof(facts, images, captions):
    """The planted case's checks from search's facts: keep set inside ln_pre, recall@5 within one query."""
    queries = {"image_retrieval_recall@5": captions, "text_retrieval_recall@5": images}
    off = {key: abs(facts["kept"][key] - facts["fp32"][key]) * queries[key] for key in RECALL_KEYS}
    return {"keep_inside_ln_pre": bool(facts["keep"]) and [scope.split("/")[-1] for scope in facts["keep_scopes"]] == ["ln_pre"],
            "queries_off_after_keep": off, "within_one_query": all(value <= 1 + 1e-9 for value in off.values()),
            "queries_off_in_fp16": {key: abs(facts["fp16"][key] - facts["fp32"][key]) * queries[key]
                                    for key in RECALL_KEYS}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="openclip-ascend-tiny,ViT-B-32,ViT-L-14")
    parser.add_argument("--towers", default="vision,text")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--planted", default="openclip-ascend-tiny,ViT-B-32", help="models to plant the stem overflow in")
    parser.add_argument("--baseline", help="a git revision of the kit to measure side by side")
    parser.add_argument("--baseline-models", default="openclip-ascend-tiny,ViT-B-32")
    parser.add_argument("--work", help="scratch folder (default: a new one under the system's temp, removed after)")
    parser.add_argument("--results-file", default="bench/results/precision.json")
    for child_option in ("child", "kit", "facts", "model", "tower", "prefix", "prep", "out"):
        parser.add_argument(f"--{child_option}", help=argparse.SUPPRESS)
    parser.add_argument("--plant", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)

    sys.path.insert(0, str(ROOT))
    from openclip_ascend.data.preprocess import preprocess_dataset
    from openclip_ascend.data.sample import write_sample_dir
    from openclip_ascend.files import write_json, write_text
    from openclip_ascend.markdown import markdown_table
    from openclip_ascend.report.writer import machine

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_precision_"))
    work.mkdir(parents=True, exist_ok=True)
    kits = {"kit": ROOT}
    if args.baseline:
        kits["baseline"] = work / "baseline"
        kits["baseline"].mkdir(exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "openclip_ascend"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(kits["baseline"])], input=archive, check=True)
    write_sample_dir(work / "sample", count=args.images, seed=7)
    load = [os.getloadavg()[0]]
    records, rows = [], []
    cases = [(model, False) for model in args.models.split(",")] + [
        (model, True) for model in args.planted.split(",") if model]
    for model, planted in cases:
        name = model.lower().replace("-", "_") + ("_planted" if planted else "")
        prep = work / f"prep_{model}"
        if not prep.exists():
            preprocess_dataset(work / "sample", prep, model, workers=1)
        prefix = work / name / "models" / name
        seconds, peak, facts = measured("export", ROOT, work / "facts.json", model=model, prefix=prefix, prep=prep,
                                        plant=planted)
        export = {"seconds": seconds, "peak_rss": peak, **facts}
        print(f"{name}: export {seconds:.0f} s, {peak / 2**30:.2f} GiB", flush=True)
        towers = ["vision"] if planted else args.towers.split(",")
        for tower in towers:
            for action in ("locate", "search"):
                record = {"model": model, "planted": planted, "tower": tower, "action": action, "export": export}
                for kit, path in kits.items():
                    if kit == "baseline" and (planted or model not in args.baseline_models.split(",")):
                        continue
                    out = work / name / f"{kit}_{action}_{tower}"
                    seconds, peak, facts = measured(action, path, work / "facts.json", model=model, tower=tower,
                                                    prefix=prefix, prep=prep, out=out, samples=args.samples)
                    record[kit] = {"seconds": seconds, "peak_rss": peak, "verdict": verdict(action, facts), **facts}
                    print(f"{name} {tower} {action} ({kit}): {seconds:.1f} s, {peak / 2**30:.2f} GiB — "
                          f"{record[kit]['verdict']}", flush=True)
                if planted and action == "search":
                    record["proof"] = {"located": records[-1]["kit"]["verdict"],
                                       **proof(record["kit"], args.images, 5 * args.images)}
                    print(f"{name}: {record['proof']}", flush=True)
                records.append(record)
                rows.append(table_row(record))
                load.append(os.getloadavg()[0])
        shutil.rmtree(work / name)
    headers = ["model", "tower", "nodes", "command", "seconds", "peak RSS GiB", "verdict"] + (
        ["baseline s", "baseline GiB", "× time", "× memory", "baseline verdict"] if args.baseline else [])
    table = markdown_table(headers, [row[:len(headers)] for row in rows])
    info = machine()
    exports = sorted({(r["model"] + (" (planted)" if r["planted"] else ""), r["export"]["seconds"],
                       r["export"]["peak_rss"]) for r in records})
    lines = ["# openclip_precision.py locate / search: time and peak memory by model size", "",
             f"{info['cpu']}, {info['cores']} cores, {info['memory']}; load average {min(load):.1f}–{max(load):.1f} "
             "during the run (other work shared the machine). Random weights (seed 0; the tiny model's bundled ones), "
             f"{args.images} images and {5 * args.images} captions, locate on the first {args.samples} inputs; search "
             "is the whole command (locate, then the keep-set search on every input). Peak RSS of the child process "
             "that ran it, imports included; export apart.", "", table, "",
             "Export (once per model, before locate or search in the command; its peak is the command's when larger): "
             + "; ".join(f"{model} {seconds:.0f} s, {peak / 2**30:.2f} GiB" for model, seconds, peak in exports) + "."]
    contained = {f"`{name}`" for record in records for name in record["kit"]["contained_nodes"]}
    if contained:
        lines += ["", "Contained nodes (a large error of their own that their readers do not carry; first three per "
                  f"run): {', '.join(sorted(contained))}."]
    for record in records:
        if "proof" in record:
            facts = record["proof"]
            lines += ["", f"Planted stem overflow, {record['model']} (stem ×{record['export']['stem_factor']:.0f}): "
                      f"locate: {facts['located']}; search: {record['kit']['verdict']} "
                      f"({', '.join(f'`{name}`' for name in record['kit']['keep'])}). Keep set inside ln_pre: "
                      f"{facts['keep_inside_ln_pre']}; recall@5 off fp32 by (image, text retrieval queries) "
                      f"{off_text(facts['queries_off_in_fp16'])} in fp16, {off_text(facts['queries_off_after_keep'])} "
                      f"with the keep set (within one query: {facts['within_one_query']})."]
    write_json(args.results_file, {"machine": info, "load_average": load, "images": args.images,
                                   "captions": 5 * args.images, "samples": args.samples, "baseline": args.baseline,
                                   "results": records})
    write_text(Path(args.results_file).with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.work:
        shutil.rmtree(work)


def off_text(queries):
    return f"({queries['image_retrieval_recall@5']:.0f}, {queries['text_retrieval_recall@5']:.0f})"


def table_row(record):
    kit = record["kit"]
    row = [record["model"] + (" (planted)" if record["planted"] else ""), record["tower"], kit["nodes"],
           record["action"], f"{kit['seconds']:.1f}", f"{kit['peak_rss'] / 2**30:.2f}", kit["verdict"]]
    base = record.get("baseline")
    if base:
        row += [f"{base['seconds']:.1f}", f"{base['peak_rss'] / 2**30:.2f}", f"{kit['seconds'] / base['seconds']:.2f}",
                f"{kit['peak_rss'] / base['peak_rss']:.2f}", base["verdict"]]
    else:
        row += ["", "", "", "", ""]
    return row


if __name__ == "__main__":
    main()
