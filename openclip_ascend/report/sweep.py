"""The variant sweep (``openclip_perf.py --variants``, pipeline ``VARIANTS``): compile each atc preset
combination and NPU-graph option set (atc_presets.py), then per batch size measure its accuracy against
PyTorch on a subset of the preprocessed set (recall@5 both ways, min cosine of every embedding) and its
pure-inference throughput, and choose the fastest OMs that keep PyTorch's accuracy.

The two towers are separate OMs, so each is chosen on its own: a tower's candidates are the variants whose
embeddings of that tower keep cosine ≥ ``min_cosine`` at every batch size, ranked by that tower's fps at the
largest batch size (the published figure's). The chosen pair is the fastest (vision fps first, text fps
breaking ties) whose recall@5 — computed from those two OMs' own embeddings — stays within ``recall_bound``
of PyTorch's on the same subset, both ways, at every batch size; so one list that tries each option once
tries it on and off for each tower. Variants whose compile fails are listed with atc's E-code and do not
stop the others.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..agreement import cosine_text
from ..evaluate.verdict import MIN_COSINE, RECALL_BOUND, RECALL_KEYS
from ..files import KitError, write_json
from ..markdown import markdown_table, save_table

E_CODE = re.compile(r"\b(E[A-Z]?\d{4,5})\b")


@dataclass
class SweepOptions:
    variants: list  # atc_presets.Variant
    accuracy_subset: int = 200  # images (with all their captions); 0: the whole set
    recall_bound: float = RECALL_BOUND  # the verdict's bounds, without its one-query allowance
    min_cosine: float = MIN_COSINE


def om_embeddings(om, inputs, device=0, uint8_inputs=None):
    """``inputs`` through a static-batch OM: whole batches, the last padded with its first sample (as
    ais_bench pads) and the padding dropped. An OM that takes uint8 (AIPP) gets ``uint8_inputs``."""
    from ..run.runner import padded_batches
    from ..run.sessions import AscendSession

    session = AscendSession(om, device)
    try:
        if session.input_dtype == np.uint8:
            if uint8_inputs is None:
                raise KitError(f"{om} takes uint8 images (AIPP); run the sweep with an aipp variant listed")
            inputs = uint8_inputs
        outputs = [session.run(batch)[:count] for batch, count in padded_batches(inputs, session.input_shape[0])]
    finally:
        session.close()
    return np.concatenate(outputs)


def throughput(om, batch, loops, device, out_dir):
    """Pure-inference fps of ``om`` as step 6 measures it (the runner's summary)."""
    import functools

    from ..run.runner import infer_opened
    from ..run.sessions import open_session

    summary = infer_opened(functools.partial(open_session, "ascend", str(om), device=device), output=str(out_dir),
                           output_dirname=Path(om).stem, batchsize=batch, loop=loops)
    return summary["throughput"], summary["spread"]["noisy"]


def within_recall(metrics, reference, options):
    return all(abs(metrics[key] - reference[key]) <= options.recall_bound + 1e-12 for key in RECALL_KEYS)


def accuracy_ok(row, reference, options):
    return within_recall(row["metrics"], reference, options) and min(row["min_cosine"].values()) >= options.min_cosine


def choose(rows, reference, options, pair_metrics=None):
    """(chosen {"vision": variant, "text": variant} or None, Pareto front names, per-variant summary) against
    ``reference``, PyTorch's recall on the same subset (the same at every batch size).

    ``pair_metrics(vision_variant, text_variant, batch)`` gives the recall of one variant's vision OM with
    another's text OM (without it, only a variant's own pair is tried). A variant's summary is ``ok`` when its
    own pair keeps every bound at every batch size it ran; the front holds the variants no other matches or
    beats on speed, worst recall@5 gap and worst cosine at once."""
    largest = max(row["batch_size"] for row in rows) if rows else None
    summary, batches = {}, {}
    for row in rows:
        entry = summary.setdefault(row["variant"], {"variant": row["variant"], "ok": True, "speed": (0.0, 0.0),
                                                    "gap": 0.0, "cosine": 1.0,
                                                    "tower_ok": dict.fromkeys(("vision", "text"), True)})
        entry["ok"] &= accuracy_ok(row, reference, options)
        entry["gap"] = max(entry["gap"], *(abs(row["metrics"][k] - reference[k]) for k in RECALL_KEYS))
        entry["cosine"] = min(entry["cosine"], *row["min_cosine"].values())
        for tower, cosine in row["min_cosine"].items():
            entry["tower_ok"][tower] &= cosine >= options.min_cosine
        if row["batch_size"] == largest:
            entry["speed"] = (row["fps"]["vision"], row["fps"]["text"])
        batches.setdefault(row["variant"], {})[row["batch_size"]] = row["metrics"]
    entries = list(summary.values())

    def dominates(a, b):
        at_least = a["speed"] >= b["speed"] and a["gap"] <= b["gap"] and a["cosine"] >= b["cosine"]
        return at_least and (a["speed"], -a["gap"], a["cosine"]) != (b["speed"], -b["gap"], b["cosine"])

    front = [e["variant"] for e in entries if not any(dominates(o, e) for o in entries if o is not e)]

    def pair_ok(vision, text):
        shared = sorted(set(batches[vision]) & set(batches[text]))
        return all(within_recall(batches[vision][b] if vision == text else pair_metrics(vision, text, b),
                                 reference, options) for b in shared)

    candidates = {tower: [e for e in entries if e["tower_ok"][tower] and e["speed"][index] > 0]
                  for index, tower in enumerate(("vision", "text"))}
    pairs = sorted(((v, t) for v in candidates["vision"] for t in candidates["text"]
                    if v is t or pair_metrics is not None),
                   key=lambda pair: (pair[0]["speed"][0], pair[1]["speed"][1]), reverse=True)
    chosen = next(({"vision": v["variant"], "text": t["variant"]} for v, t in pairs
                   if pair_ok(v["variant"], t["variant"])), None)
    return chosen, front, summary


def e_code(error):
    found = E_CODE.search(error or "")
    return found.group(1) if found else "?"


def _stale_npu_graphs(prefix, variants):
    """The NPU-graph option sets the variants compile whose graphs are missing, older than the standard graph
    they come from, or made with other options (an export by an older kit)."""
    import onnx

    from ..model.export import onnx_path
    from ..model.npu_options import METADATA_KEY, describe, graph_name, tower_options

    def stale(tower, graph_options):
        path, standard = onnx_path(prefix, graph_name(tower, graph_options)), onnx_path(prefix, tower)
        if not path.is_file() or (standard.is_file() and path.stat().st_mtime < standard.stat().st_mtime):
            return True
        recorded = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return recorded.get(METADATA_KEY) != describe(tower_options(graph_options, tower))

    wanted = {v.graph_options for v in variants if v.graph_options is not None}
    return [graph_options for graph_options in sorted(wanted, key=describe)
            if any(stale(tower, graph_options) for tower in ("vision", "text"))]


def _build(prefix, variant, tower):
    """What acts on ``tower``'s OM of ``variant``, for the table: the graph's options and hp's op list."""
    from ..ascend.atc_presets import implmode_ops
    from ..model.export import onnx_path
    from ..model.npu_options import describe, tower_options

    graph = "standard graph" if variant.graph_options is None else \
        describe(tower_options(variant.graph_options, tower))
    if "hp" not in variant.parts:
        return graph
    ops = implmode_ops(onnx_path(prefix, variant.graph(tower)))
    return f"{graph}; hp: {','.join(ops) if ops else 'nothing to act on'}"


def run_sweep(config, options):
    """Compile, measure and choose; writes ``variants.json``, ``variants.md`` / ``.csv`` into the run
    folder and returns the record (also results.json's ``performance.variants``)."""
    from tqdm import tqdm

    from ..agreement import compare_embeddings
    from ..ascend.atc import run_jobs
    from ..ascend.atc_presets import preset_notes, variant_jobs
    from ..ascend.npu_smi import detect_soc_version
    from ..data.dataset import load_prepared
    from ..evaluate.metrics import evaluate_retrieval
    from ..model.export import DEFAULT_OPSET, export_npu_graphs
    from ..model.npu_options import describe
    from ..model.text_lengths import base_tower
    from ..run.runner import embed_all
    from ..run.sessions import TorchSession

    prefix, device = config.onnx_prefix, config.devices[0]
    stale = _stale_npu_graphs(prefix, options.variants)
    if stale:
        from ..model.loading import load_model

        model, opset = load_model(config.model_name, config.pretrained), config.opset or DEFAULT_OPSET
        for graph_options in stale:  # at the opset step 2 exported with: the one this CANN parses
            config.log("python", "openclip_torch2onnx.py", "--model-name", config.model_name, "--pretrained",
                       config.pretrained, "--onnx-prefix", prefix, "--opset", opset, "--npu-graph", describe(graph_options))
            export_npu_graphs(model, prefix, opset=opset, options=graph_options)
    soc, _, _ = detect_soc_version(config.soc_version)
    manifest, inputs, owners = load_prepared(config.prep, options.accuracy_subset)
    aipp_config = uint8 = None
    if any("aipp" in v.parts for v in options.variants):
        from ..ascend.aipp import prepare_uint8, to_uint8

        config.log("python", "openclip_preprocess.py", "--data-dir", config.data_dir or config.output_dir / "sample",
                   "--save-dir", config.prep, "--model-name", config.model_name, "--uint8")
        aipp_config = prepare_uint8(config.prep)
        uint8 = to_uint8(inputs["vision"], manifest.preprocess["mean"], manifest.preprocess["std"])
    torch_embeds = {tower: embed_all(TorchSession(config.model_name, config.pretrained, tower).run, inputs[tower], 16)
                    for tower in ("vision", "text")}
    torch_metrics = evaluate_retrieval(torch_embeds["vision"], torch_embeds["text"], owners).metrics
    out_dir = config.output_dir / "variants"
    rows, failures, notes, embeds = [], [], [], {}
    for variant in tqdm(options.variants, desc="variants", unit="variant"):
        config.log("python", "convert/onnx2om.py", "--onnx-prefix", prefix, "--batch-sizes",
                   ",".join(map(str, config.batch_sizes)), "--soc-version", soc, "--output-dir", out_dir,
                   "--variant", variant.name, *(["--aipp-config", aipp_config] if "aipp" in variant.parts else []))
        jobs = run_jobs(variant_jobs(prefix, variant, ("vision", "text"), config.batch_sizes, soc, out_dir,
                                     config.precision_mode, aipp_config=aipp_config))
        notes += preset_notes(prefix, variant, ("vision", "text"))
        failures += [{"variant": variant.name, "tower": base_tower(job.tower), "batch_size": int(job.batch),
                      "code": e_code(job.error), "error": job.error, "log": str(job.log)}
                     for job in jobs if job.status == "failed"]
        builds = {tower: _build(prefix, variant, tower) for tower in ("vision", "text")}
        for batch in config.batch_sizes:
            oms = {base_tower(job.tower): job.om for job in jobs if job.batch == str(batch) and job.status != "failed"}
            if len(oms) < 2:
                continue
            embeds[variant.name, batch] = {tower: om_embeddings(oms[tower], inputs[tower], device, uint8)
                                           for tower in oms}
            fps, noisy = {}, {}
            for tower, om in oms.items():
                fps[tower], noisy[tower] = throughput(om, batch, config.perf_loops, device, out_dir / "perf")
            metrics = evaluate_retrieval(embeds[variant.name, batch]["vision"], embeds[variant.name, batch]["text"],
                                         owners).metrics
            rows.append({"variant": variant.name, "tag": variant.tag, "batch_size": batch, "fps": fps, "noisy": noisy,
                         "metrics": {key: metrics[key] for key in RECALL_KEYS}, "builds": builds,
                         "min_cosine": {tower: compare_embeddings(torch_embeds[tower], embeds[variant.name, batch][tower])
                                        ["min_cosine"] for tower in oms},
                         "oms": {tower: str(om) for tower, om in oms.items()}})

    def pair_metrics(vision, text, batch):
        metrics = evaluate_retrieval(embeds[vision, batch]["vision"], embeds[text, batch]["text"], owners).metrics
        return {key: metrics[key] for key in RECALL_KEYS}

    chosen, front, summary = choose(rows, torch_metrics, options, pair_metrics)
    chosen_rows = _chosen_rows(rows, chosen, pair_metrics)
    for row in rows + chosen_rows:
        row["accuracy_ok"] = accuracy_ok(row, torch_metrics, options)
    record = {"variants": [v.name for v in options.variants], "soc_version": soc, "rows": rows, "failures": failures,
              "torch": {key: torch_metrics[key] for key in RECALL_KEYS}, "chosen": chosen, "pareto_front": front,
              "chosen_rows": chosen_rows, "notes": notes,
              "accuracy_subset": {"images": len(inputs["vision"]), "captions": len(owners)},
              "recall_bound": options.recall_bound, "min_cosine_bound": options.min_cosine,
              "summary": list(summary.values())}
    write_json(config.output_dir / "variants.json", record)
    print(save_table(config.output_dir / "variants", *variant_table(record), title="atc variants (fps: pure inference)"))
    for note in notes:
        print(f"note: {note}")
    print(chosen_line(record))
    return record


def _chosen_rows(rows, chosen, pair_metrics):
    """The chosen pair at each batch size both towers ran: each tower's figures from its own variant's row, the
    recall from the pair's embeddings; none when one variant gives both towers (its rows are the table's)."""
    if not chosen or chosen["vision"] == chosen["text"]:
        return []
    by_variant = {(row["variant"], row["batch_size"]): row for row in rows}
    pairs = []
    for batch in sorted({row["batch_size"] for row in rows}):
        vision, text = by_variant.get((chosen["vision"], batch)), by_variant.get((chosen["text"], batch))
        if vision and text:
            pairs.append({"variant": pair_name(chosen), "batch_size": batch,
                          "metrics": pair_metrics(chosen["vision"], chosen["text"], batch),
                          **{key: {"vision": vision[key]["vision"], "text": text[key]["text"]}
                             for key in ("fps", "noisy", "min_cosine", "builds", "oms")}})
    return pairs


def pair_name(chosen):
    """``npu+hp`` when one variant gives both towers, else ``npu+qkv+hp (vision) + npu+hp (text)``."""
    if chosen["vision"] == chosen["text"]:
        return chosen["vision"]
    return f"{chosen['vision']} (vision) + {chosen['text']} (text)"


def variant_table(record):
    headers = ["variant", "batch size", "vision fps", "text fps", "image R@5", "text R@5", "vision min cos",
               "text min cos", "within bounds", "vision build", "text build"]
    towers = ("vision", "text")
    rows = [[r["variant"], r["batch_size"]] + [f"{r['fps'][t]:.1f}" + (" (noisy)" if r["noisy"][t] else "")
                                                for t in towers]
            + [f"{r['metrics'][k]:.4f}" for k in RECALL_KEYS]
            + [cosine_text(r["min_cosine"][t]) for t in towers]
            + ["yes" if r["accuracy_ok"] else "**no**"] + [r["builds"][t] for t in towers]
            for r in record["rows"] + record["chosen_rows"]]
    rows += [[f["variant"], f["batch_size"], f"compile failed ({f['code']}, {f['tower']})"] + [""] * 8
             for f in record["failures"]]
    return headers, rows


def chosen_line(record):
    bound = f"recall@5 within {record['recall_bound']:g} of PyTorch and cosine ≥ {record['min_cosine_bound']:g}"
    if record["chosen"] is None:
        return f"no variant kept the accuracy bounds ({bound}); keep the reference flags"
    noisy = any(any(row["noisy"].values()) for row in record["rows"])
    largest = max(row["batch_size"] for row in record["rows"])
    oms = {tower: Path(row["oms"][tower]).name for tower in ("vision", "text") for row in record["rows"]
           if row["variant"] == record["chosen"][tower] and row["batch_size"] == largest}
    return (f"chosen: {pair_name(record['chosen'])} — the fastest OMs with {bound} on "
            f"{record['accuracy_subset']['images']} images (batch {largest}: {oms['vision']}, {oms['text']}); "
            f"Pareto front: {', '.join(record['pareto_front'])}"
            + ("; some timings are noisy (marked): the choice may change on an idle NPU" if noisy else ""))


def sweep_section(record):
    """report.md's lines for a sweep."""
    lines = ["## atc variant sweep", "", f"PyTorch on the same subset ({record['accuracy_subset']['images']} images, "
             f"{record['accuracy_subset']['captions']} captions): image R@5 {record['torch'][RECALL_KEYS[0]]:.4f}, "
             f"text R@5 {record['torch'][RECALL_KEYS[1]]:.4f}.", "", markdown_table(*variant_table(record)), "",
             chosen_line(record) + ".", ""]
    if record.get("notes"):
        lines += ["Notes: " + "; ".join(record["notes"]) + ".", ""]
    if record["failures"]:
        lines += ["Compile failures: " + "; ".join(f"{f['variant']} {f['tower']} bs{f['batch_size']} {f['code']} "
                                                   f"(`{f['log']}`)" for f in record["failures"]), ""]
    return lines


def parse_options(variants, accuracy_subset):
    from ..ascend.atc_presets import parse_variants

    if accuracy_subset < 0:
        raise KitError("--accuracy-subset must be ≥ 0 (0: the whole set)")
    return SweepOptions(parse_variants(variants), accuracy_subset)
