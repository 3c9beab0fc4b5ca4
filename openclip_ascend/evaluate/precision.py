"""Where fp16 breaks a tower, and the smallest set of nodes to keep in fp32 that repairs it.

Both work on the CPU through the kit's fp16 simulation (``export.round_like_fp16``: weights and every
intermediate stored in fp16, arithmetic in fp32). ``locate`` runs the fp32 graph (the golden run) and
the simulation on the same inputs with every node's output exposed, and reports per node its error
against fp32, grouped by module scope (``transformer/resblocks.10/ln_2``). ``search`` grows a set of
scopes kept in fp32 — worst first, by the error each one introduces — until recall@5 and the
embeddings are back within bounds of fp32, prunes what is not needed, then narrows each kept scope
to its nodes; the result is an atc ``--keep_dtype`` file.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..agreement import compare_embeddings
from ..ascend.atc import CUBE_OPS
from ..files import KitError, atomic_path, write_text
from ..run.runner import embed_all, padded_batches
from ..run.sessions import OnnxRuntimeSession, session_options
from .metrics import evaluate_retrieval

# A node's error "jumps" when it overflows where its inputs did not, or when its relative error is
# JUMP_FACTOR times its inputs' and also large in itself: ≥ JUMP_FLOOR (fp16 storage alone gives ~1e-3;
# a mean of values near zero reads ~1e-2 relative to its own small scale) or a cosine below JUMP_COSINE.
JUMP_FACTOR, JUMP_FLOOR, JUMP_COSINE = 10.0, 0.05, 0.999


def scope_of(node_name):
    """``/transformer/resblocks.10/ln_2/ReduceMean`` → ``transformer/resblocks.10/ln_2``."""
    parts = [part for part in node_name.split("/") if part]
    return "/".join(parts[:-1]) or "(top)"


@dataclass
class NodeError:
    """One node's output in the simulation against fp32, over every sample seen."""

    name: str
    op_type: str
    output: str
    depth: int
    inputs: list
    max_abs: float = 0.0
    max_rel: float = 0.0
    min_cosine: float = 1.0
    overflow: bool = False
    introduced: float = 0.0  # relative error over its inputs' worst (how much error this node adds)
    jump: bool = False

    @property
    def scope(self):
        return scope_of(self.name)

    def update(self, golden, simulated):
        golden, simulated = golden.astype(np.float64), simulated.astype(np.float64)
        finite = np.isfinite(golden)
        self.overflow |= bool((finite & ~np.isfinite(simulated)).any())
        with np.errstate(invalid="ignore"):  # inf − inf where both overflowed: masked out here
            diff = np.abs(np.where(finite & np.isfinite(simulated), golden - simulated, 0.0))
        scale = float(np.abs(golden[finite]).max()) if finite.any() else 0.0
        self.max_abs = max(self.max_abs, float(diff.max()) if diff.size else 0.0)
        self.max_rel = max(self.max_rel, float(diff.max()) / scale if scale and diff.size else 0.0)
        if self.overflow:
            self.max_rel = self.max_abs = float("inf")
        # cosine over the entries fp32 has finite (a causal mask's -inf are -inf in both); an overflow
        # counts as 0 there, so it still lowers the cosine
        both = finite & np.isfinite(simulated)
        golden, simulated = np.where(finite, golden, 0.0), np.where(both, simulated, 0.0)
        rows_g = golden.reshape(golden.shape[0], -1) if golden.ndim > 1 else golden.reshape(1, -1)
        rows_s = simulated.reshape(rows_g.shape)
        norms = np.linalg.norm(rows_g, axis=1) * np.linalg.norm(rows_s, axis=1)
        with np.errstate(invalid="ignore", over="ignore"):
            cosines = np.where(norms > 0, np.sum(rows_g * rows_s, axis=1) / np.where(norms > 0, norms, 1), 1.0)
        cosines = np.where(np.isfinite(cosines), cosines, -1.0)
        self.min_cosine = min(self.min_cosine, float(cosines.min()) if cosines.size else 1.0)


def onnx_load(source):
    import onnx

    return onnx.load(str(source))


def copy_of(model_proto):
    model = type(model_proto)()
    model.CopyFrom(model_proto)
    return model


def traced_nodes(graph, floats):
    """The nodes whose float outputs (``floats``: ``export.float_outputs``) the comparison reads, in
    graph (topological) order."""
    nodes = []
    for depth, node in enumerate(graph.node):
        if node.op_type in ("Shape", "Constant") or not node.output or node.output[0] not in floats:
            continue
        nodes.append(NodeError(node.name, node.op_type, node.output[0], depth, list(node.input)))
    return nodes


def _exposing(model_proto, names):
    """A copy of ``model_proto`` whose graph outputs are its own plus ``names``."""
    from onnx import TensorProto, helper

    model = copy_of(model_proto)
    present = {output.name for output in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                              for name in names if name not in present)
    return model


def _session(model_proto):
    """An ONNX Runtime session (the kit's CPU options) on an in-memory graph with any number of outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_proto.SerializeToString(), session_options(),
                                   providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name


def _run_all(session, names, batch):
    session, input_name = session
    return dict(zip(names, session.run(names, {input_name: batch})))


def locate(source, inputs, batch_size=2):
    """Per-node error of the fp16 simulation against fp32 on ``inputs`` (an array of samples); returns
    the NodeErrors in graph order, with ``introduced`` and each ``jump`` marked."""
    from ..model.export import float_outputs, round_like_fp16

    model, floats = onnx_load(source), float_outputs(source)
    nodes = traced_nodes(model.graph, floats)
    names = [node.output for node in nodes]
    golden = _session(_exposing(model, names))
    simulated = _session(_exposing(round_like_fp16(model, floats), names))
    for start in tqdm(range(0, len(inputs), batch_size), desc="locate", unit="batch"):
        chunk = np.ascontiguousarray(inputs[start:start + batch_size])
        expected, got = _run_all(golden, names, chunk), _run_all(simulated, names, chunk)
        for node in nodes:
            node.update(expected[node.output], got[node.output])
    return mark_jumps(nodes)


def locate_dump(source, batches, dump_folder):
    """Per-node error of an NPU's operator dump against the fp32 graph: ``batches`` are the inputs of
    the dumped executions, in order (the k-th dump of each op is the k-th batch's). Only nodes whose
    output the dump holds are compared (atc fuses others away). Returns (NodeErrors, notes)."""
    from ..ascend.dump import dump_files, outputs_by_node, read_dump_file
    from ..model.export import float_outputs

    model, floats = onnx_load(source), float_outputs(source)
    records = [read_dump_file(path) for path in tqdm(dump_files(dump_folder), desc="read dump", unit="file")]
    dumped, unmatched = outputs_by_node(records, model.graph)
    traced = traced_nodes(model.graph, floats)
    nodes = [node for node in traced if node.output in dumped]
    if not nodes:
        raise KitError(f"{dump_folder}: no dumped op names a node of {source} (first dumped: "
                       f"{records[0].op_name!r}); dump the OM compiled from this ONNX graph")
    executions = min(len(dumped[node.output]) for node in nodes)
    if executions < len(batches):
        raise KitError(f"{dump_folder}: {executions} dumped executions for {len(batches)} input batches; give the "
                       "inputs of the dumped run only")
    names = [node.output for node in nodes]
    golden = _session(_exposing(model, names))
    mismatched = set()
    for k, batch in enumerate(batches):
        expected = _run_all(golden, names, np.ascontiguousarray(batch))
        for node in nodes:
            got = dumped[node.output][k].array()
            if got.size != expected[node.output].size:
                mismatched.add(node.name)
                continue
            node.update(expected[node.output], got.reshape(expected[node.output].shape))
    nodes = [node for node in nodes if node.name not in mismatched]
    notes = [f"{len(nodes)} of {len(traced)} float nodes compared with the dump of {len(batches)} execution(s)"
             + ("; the rest were fused or renamed by atc" if len(nodes) < len(traced) else "")]
    if unmatched:
        notes.append(f"{len(unmatched)} dumped ops name no ONNX node (e.g. `{unmatched[0]}`)")
    if executions > len(batches):
        notes.append(f"the dump holds {executions} executions; the first {len(batches)} were compared")
    if mismatched:
        notes.append(f"{len(mismatched)} nodes skipped: the dumped tensor's size differs from the graph's (e.g. "
                     f"`{sorted(mismatched)[0]}`)")
    return mark_jumps(nodes), notes


def mark_jumps(nodes):
    """Each node's ``introduced`` error (over its inputs' worst) and its ``jump``; returns ``nodes``."""
    producers = {node.output: node for node in nodes}
    for node in nodes:
        upstream = max((producers[name].max_rel for name in node.inputs if name in producers), default=0.0)
        if node.overflow:
            node.introduced = float("inf") if not np.isinf(upstream) else 0.0
        else:
            node.introduced = node.max_rel / max(upstream, 1e-4)
        node.jump = bool(not np.isinf(upstream) and (node.overflow or (
            node.introduced >= JUMP_FACTOR and (node.max_rel >= JUMP_FLOOR or node.min_cosine < JUMP_COSINE))))
    return nodes


def first_jump(nodes):
    return next((node for node in nodes if node.jump), None)


def scope_summary(nodes):
    """Per scope, in graph order: its worst node, overflow, and the error it introduces."""
    scopes = {}
    for node in nodes:
        entry = scopes.setdefault(node.scope, {"scope": node.scope, "nodes": 0, "max_rel": 0.0, "min_cosine": 1.0,
                                               "overflow": False, "introduced": 0.0, "worst": node.name,
                                               "first_depth": node.depth})
        entry["nodes"] += 1
        if node.max_rel >= entry["max_rel"]:
            entry["max_rel"], entry["worst"] = node.max_rel, node.name
        entry["min_cosine"] = min(entry["min_cosine"], node.min_cosine)
        entry["overflow"] |= node.overflow
        entry["introduced"] = max(entry["introduced"], node.introduced)
    return list(scopes.values())


# --- the search ------------------------------------------------------------------------------------

@dataclass
class Evaluation:
    keep: list
    metrics: dict
    min_cosine: float
    ok: bool


class KeepSearch:
    """Evaluates keep sets: the tower through the fp16 simulation with those nodes in fp32, the other
    tower and the reference in fp32; recall@5 both ways within ``recall_bound`` of fp32 and the
    tower's embeddings at cosine ≥ ``min_cosine`` to fp32 make a set good enough."""

    def __init__(self, source, inputs, other_embeds, owners, tower, recall_bound, min_cosine, batch_size=16):
        self.inputs, self.owners, self.tower = inputs, owners, tower
        self.other, self.recall_bound, self.min_cosine, self.batch_size = other_embeds, recall_bound, min_cosine, batch_size
        from ..model.export import float_outputs

        self.graph, self.floats = onnx_load(source), float_outputs(source)  # read once, rounded per keep set
        self.output = self.graph.graph.output[0].name
        self.fp32_embeds = self._embed(_session(self.graph))
        self.fp32 = self._metrics(self.fp32_embeds)
        self.evaluations = 0

    def _embed(self, session):
        return embed_all(lambda batch: _run_all(session, [self.output], batch)[self.output], self.inputs,
                         self.batch_size)

    def _metrics(self, embeds):
        images, texts = (embeds, self.other) if self.tower == "vision" else (self.other, embeds)
        return evaluate_retrieval(images, texts, self.owners).metrics

    def evaluate(self, keep):
        from ..model.export import round_like_fp16

        self.evaluations += 1
        embeds = self._embed(_session(round_like_fp16(copy_of(self.graph), self.floats, keep)))
        broken = ~np.isfinite(embeds).all(axis=1)  # an overflow reached the embedding: no direction at all
        embeds[broken] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            metrics = self._metrics(embeds)
            cosine = float(np.nan_to_num(compare_embeddings(self.fp32_embeds, embeds)["min_cosine"], nan=-1.0))
        within = all(abs(metrics[key] - self.fp32[key]) <= self.recall_bound + 1e-12 for key in self.fp32
                     if "@5" in key)
        return Evaluation(sorted(keep), metrics, cosine, within and cosine >= self.min_cosine)


def search(searcher, nodes, vector_only=False):
    """The smallest keep set found: scopes by the error they introduce, greedily until good enough,
    pruned, then each kept scope narrowed to its worst nodes and pruned again node by node. Returns
    (plain fp16, result, steps)."""
    candidates = [node for node in nodes if not (vector_only and node.op_type in CUBE_OPS)]
    plain = searcher.evaluate([])
    steps = []
    if plain.ok:
        return plain, plain, steps
    by_scope = {}
    for node in candidates:
        by_scope.setdefault(node.scope, []).append(node)
    ranked = sorted(by_scope, key=lambda scope: (-max(n.introduced for n in by_scope[scope]),
                                                 min(n.depth for n in by_scope[scope])))
    def names(scopes):
        return [node.name for scope in scopes for node in by_scope[scope]]

    def trial(count):  # the worst ``count`` scopes kept
        evaluation = searcher.evaluate(names(ranked[:count]))
        steps.append({"step": "keep worst", "scopes": count, "ok": evaluation.ok, "metrics": evaluation.metrics,
                      "min_cosine": evaluation.min_cosine})
        return evaluation

    def prune(items, keep_without, label):
        """``items`` (scope or node names, changed in place) less each one whose removal keeps the set
        good enough, latest first, the last excepted: the last addition made the set good and can make
        earlier ones unnecessary. Returns the last good evaluation, or None."""
        good_enough = None
        for item in list(reversed(items[:-1])):
            evaluation = searcher.evaluate(keep_without(item))
            steps.append({"step": "drop", label: item, "ok": evaluation.ok})
            if evaluation.ok:
                items.remove(item)
                good_enough = evaluation
        return good_enough

    # grow: 1, 2, 4, … worst scopes until one is good enough, then bisect for the fewest
    good, bad, count = None, 0, 1
    while good is None:
        evaluation = trial(count)
        if evaluation.ok:
            good, result = count, evaluation
        elif count == len(ranked):
            return plain, evaluation, steps
        else:
            bad, count = count, min(2 * count, len(ranked))
    while good - bad > 1:
        middle = (good + bad) // 2
        evaluation = trial(middle)
        if evaluation.ok:
            good, result = middle, evaluation
        else:
            bad = middle
    chosen = ranked[:good]
    result = prune(chosen, lambda scope: names([s for s in chosen if s != scope]), "scope") or result
    kept = {scope: names([scope]) for scope in chosen}

    def kept_names(groups, leaving=None):
        return [name for group in groups.values() for name in group if name != leaving]

    for scope in chosen:  # narrow each scope to its worst nodes: those that overflow first, then by error added
        ordered = [node.name for node in sorted(by_scope[scope], key=lambda node: (not node.overflow, -node.introduced))]
        for count in range(1, len(ordered)):
            evaluation = searcher.evaluate(kept_names({**kept, scope: ordered[:count]}))
            if evaluation.ok:
                kept[scope], result = ordered[:count], evaluation
                steps.append({"step": "narrow", "scope": scope, "nodes": count, "ok": True})
                break
        result = prune(kept[scope], lambda name: kept_names(kept, leaving=name), "node") or result
    return plain, result, steps


def bought(searcher, result_keep):
    """What each kept scope buys: recall@5 and min cosine with that scope alone dropped from the set."""
    scopes = sorted({scope_of(name) for name in result_keep})
    effects = {}
    for scope in scopes:
        without = searcher.evaluate([name for name in result_keep if scope_of(name) != scope])
        effects[scope] = {"without_it": without.metrics, "min_cosine_without_it": without.min_cosine}
    return effects


# --- what a person reads -------------------------------------------------------------------------

NODE_COLUMNS = ["depth", "node", "op_type", "scope", "max_abs_error", "max_rel_error", "min_cosine", "overflow",
                "introduced", "jump"]


def node_rows(nodes):
    return [[node.depth, node.name, node.op_type, node.scope, f"{node.max_abs:.3e}", f"{node.max_rel:.3e}",
             f"{node.min_cosine:.6f}", int(node.overflow), f"{node.introduced:.3g}", int(node.jump)] for node in nodes]


def write_locate_report(nodes, out_dir, tower, samples, against="fp16 simulation", notes=()):
    """``node_errors_{tower}.csv`` (every node), ``.md`` (the first jump and the worst scopes) and
    ``.png`` (relative error against depth); ``against`` names what was compared with fp32 (the
    simulation, or an NPU dump); returns the Markdown text."""
    from ..markdown import markdown_table, write_csv

    stem = Path(out_dir) / f"node_errors_{tower}"
    write_csv(stem.with_suffix(".csv"), NODE_COLUMNS, node_rows(nodes))
    jump = first_jump(nodes)
    scopes = sorted(scope_summary(nodes), key=lambda entry: (-entry["introduced"], entry["first_depth"]))
    lines = [f"# {against} against fp32: {tower} tower, {len(nodes)} nodes, {samples} samples", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    if jump is None:
        lines += ["No node's error jumps: fp16 storage costs every node about the same small relative error.", ""]
    else:
        lines += [f"First jump: **{jump.name}** ({jump.op_type}, scope `{jump.scope}`): relative error "
                  f"{jump.max_rel:.3g}{' (overflow to inf/NaN)' if jump.overflow else ''}, "
                  f"{jump.introduced:.3g}× its inputs'.", ""]
    rows = [[f"`{e['scope']}`", e["nodes"], f"{e['max_rel']:.3g}", f"{e['min_cosine']:.6f}",
             "yes" if e["overflow"] else "", f"{e['introduced']:.3g}", f"`{e['worst']}`"] for e in scopes[:15]]
    lines += ["Scopes by the error they introduce (worst 15):", "",
              markdown_table(["scope", "nodes", "max rel error", "min cosine", "overflow", "introduced ×",
                              "worst node"], rows), "", f"Every node: `{stem.name}.csv`; plot: `{stem.name}.png`."]
    text = "\n".join(lines) + "\n"
    write_text(stem.with_suffix(".md"), text)
    plot_errors(nodes, stem.with_suffix(".png"), f"{tower} tower: {against} against fp32")
    return text


def plot_errors(nodes, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4), constrained_layout=True)
    finite = [node for node in nodes if np.isfinite(node.max_rel)]
    axis.semilogy([n.depth for n in finite], [max(n.max_rel, 1e-9) for n in finite], ".", markersize=3,
                  label="max relative error")
    overflow = [node.depth for node in nodes if node.overflow]
    if overflow:
        top = max([n.max_rel for n in finite] + [1.0])
        axis.semilogy(overflow, [top * 2] * len(overflow), "rx", label="overflow (inf/NaN)")
    jump = first_jump(nodes)
    if jump is not None:
        axis.axvline(jump.depth, color="orange", linestyle="--", label=f"first jump: {jump.scope}")
    axis.set_xlabel("node (graph order)")
    axis.set_ylabel("relative error vs fp32")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path


# --- the two commands ------------------------------------------------------------------------------

@dataclass
class PrecisionJob:
    """One tower of one model, exported fresh, and the preprocessed set it is judged on."""

    tower: str
    out_dir: Path
    source: Path  # the tower's fp32 ONNX
    other: Path  # the other tower's
    inputs: np.ndarray  # the tower's samples in manifest order
    other_inputs: np.ndarray
    owners: list  # caption i's image index


def export_for_precision(model_name, pretrained, out_dir):
    """Both towers exported (and checked) into ``out_dir/models``; returns the ONNX prefix."""
    from ..model.export import export_model
    from ..model.loading import default_pretrained, load_model, onnx_prefix

    prefix = onnx_prefix(out_dir, model_name)
    export_model(load_model(model_name, default_pretrained(model_name, pretrained)), prefix)
    return prefix


def prepare(prefix, prep, tower, out_dir):
    """The job for ``tower`` of the graphs at ``prefix``, on the preprocessed set in manifest order."""
    from ..data.dataset import load_prepared
    from ..model.export import onnx_path

    _, loaded, owners = load_prepared(prep)
    other = "text" if tower == "vision" else "vision"
    return PrecisionJob(tower, Path(out_dir), onnx_path(prefix, tower), onnx_path(prefix, other), loaded[tower],
                        loaded[other], owners)


def run_locate(job, samples):
    nodes = locate(job.source, job.inputs[:samples])
    text = write_locate_report(nodes, job.out_dir, job.tower, min(samples, len(job.inputs)))
    print(text)
    return nodes


def run_locate_dump(job, batches, dump_folder, what):
    """locate against an operator dump already written (``batches``: the inputs of its executions)."""
    nodes, notes = locate_dump(job.source, batches, dump_folder)
    text = write_locate_report(nodes, job.out_dir, job.tower, sum(len(b) for b in batches), against=what, notes=notes)
    print(text)
    return nodes


def run_locate_on_npu(job, om, samples, device=0):
    """The OM run on the first ``samples`` inputs (whole batches of its size, the last padded with its
    first sample as ais_bench pads) with the operator dump on — ais_bench ``--dump 1``'s acl.json in
    a fresh folder under OUTPUT_DIR/npu_dump, each batch kept there as ``inputs/{k}.npy`` for a later
    ``--npu-dump`` — then its dump against fp32."""
    import time

    from ..ascend.dump import write_acl_json
    from ..files import save_npy
    from ..run.sessions import AscendSession

    stem = job.out_dir / "npu_dump" / f"{job.tower}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, count = stem, 1
    while folder.exists():  # two runs in one second never share a dump folder
        count += 1
        folder = stem.with_name(f"{stem.name}-{count}")
    acl_json = write_acl_json(folder / "acl.json", folder / "dump", Path(om).name.split(".")[0])
    session = AscendSession(om, device, acl_json_path=acl_json)
    try:
        batches = []
        for batch, _ in padded_batches(job.inputs[:max(samples, 1)], session.input_shape[0]):
            session.run(batch)
            save_npy(folder / "inputs" / f"{len(batches)}.npy", batch)
            batches.append(batch)
    finally:
        session.close()
    print(f"operator dump of {len(batches)} execution(s) and their inputs: {folder}")
    return run_locate_dump(job, batches, folder / "dump", f"NPU dump of {Path(om).name}")


def run_search(job, samples, recall_bound, min_cosine, soc_version=""):
    """Locate, then search; writes ``keep_dtype_{tower}.cfg`` and ``precision_{tower}.json``."""
    from ..ascend.atc import is_310p
    from ..files import write_json

    nodes = run_locate(job, samples)
    other_embeds = embed_all(OnnxRuntimeSession(job.other).run, job.other_inputs, 16)
    searcher = KeepSearch(job.source, job.inputs, other_embeds, job.owners, job.tower, recall_bound, min_cosine)
    plain, result, steps = search(searcher, nodes, vector_only=is_310p(soc_version))
    keep = result.keep if result.ok else []
    write_text(job.out_dir / f"keep_dtype_{job.tower}.cfg", "".join(f"{name}\n" for name in keep))
    resolution = 1 / min(len(job.owners), len(job.inputs) if job.tower == "vision" else len(other_embeds))
    record = {"tower": job.tower, "fp32": searcher.fp32, "fp16": plain.metrics, "fp16_min_cosine": plain.min_cosine,
              "kept": result.metrics, "kept_min_cosine": result.min_cosine, "keep": keep, "found": result.ok,
              "keep_scopes": sorted({scope_of(name) for name in keep}),
              "bought": bought(searcher, keep) if keep else {}, "recall_bound": recall_bound,
              "min_cosine_bound": min_cosine, "recall_resolution": resolution, "vector_ops_only": is_310p(soc_version),
              "evaluations": searcher.evaluations, "steps": steps}
    write_json(job.out_dir / f"precision_{job.tower}.json", record)
    print(search_summary(record))
    return record


def search_summary(record):
    """The lines a person reads after a search."""
    def r5(metrics):
        return f"image R@5 {metrics['image_retrieval_recall@5']:.4f}, text R@5 {metrics['text_retrieval_recall@5']:.4f}"

    lines = [f"fp32:       {r5(record['fp32'])}",
             f"fp16:       {r5(record['fp16'])}, min cosine {record['fp16_min_cosine']:.6f}"]
    if not record["keep"] and record["found"]:
        lines.append(f"fp16 is within bounds (recall@5 ±{record['recall_bound']:g}, cosine ≥ {record['min_cosine_bound']:g}): "
                     "nothing to keep in fp32; keep_dtype file left empty")
    elif not record["found"]:
        lines.append("no keep set found within bounds among the candidate nodes"
                     + (" (vector ops only: 310P)" if record["vector_ops_only"] else "") + "; keep_dtype file left empty")
    else:
        lines.append(f"keep fp32: {r5(record['kept'])}, min cosine {record['kept_min_cosine']:.6f} — "
                     f"{len(record['keep'])} nodes in {', '.join(record['keep_scopes'])}")
    if record["recall_bound"] < record["recall_resolution"]:
        lines.append(f"note: one query moves recall by {record['recall_resolution']:.4f} on this set, more than the "
                     "bound; a larger set judges finer")
    return "\n".join(lines)
