"""Where fp16 breaks a tower, and the smallest set of nodes to keep in fp32 that repairs it.

Both work on the CPU through the kit's fp16 simulation (``model.export.round_like_fp16``: weights and every
intermediate stored in fp16, arithmetic in fp32). ``locate`` runs the fp32 graph (the golden run) and
the simulation on the same inputs with every node's output exposed, and reports per node its error
against fp32, grouped by module scope (``transformer/resblocks.10/ln_2``). ``search`` grows a set of
scopes kept in fp32 — worst first, by the error each one introduces — until recall@5 and the
embeddings are back within bounds of fp32, prunes what is not needed, then narrows each kept scope
to its nodes; the result is an atc ``--keep_dtype`` file.

Both run the graph in slices (``SlicedGraph``): consecutive runs of nodes, each a graph of its own, so
that memory follows one slice's weights and one batch of its outputs, not the whole model's.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..agreement import compare_embeddings, cosine_text
from ..ascend.atc import CUBE_OPS
from ..files import KitError, atomic_path, write_text
from ..run.runner import batches_of, embed_all, padded_batches
from ..run.sessions import OnnxRuntimeSession, session_options
from .metrics import evaluate_retrieval
from .verdict import MIN_COSINE, RECALL_BOUND, RECALL_KEYS

# A node's error "jumps" — fp16 does harm there — when it overflows where its inputs did not, or when
# its relative error is JUMP_FACTOR times its inputs' and large in itself (≥ JUMP_FLOOR: fp16 storage
# alone gives ~1e-3; or a cosine below JUMP_COSINE) AND that error reaches what reads it: one of its
# readers is also JUMP_FACTOR above the node's inputs' error and large. An error relative to a value
# near zero (the mean of a zero-mean residual stream) is large in itself and can be negligible next to
# the values it is combined with; its readers show whether it is. Such an error is "contained".
JUMP_FACTOR, JUMP_FLOOR, JUMP_COSINE = 10.0, 0.05, 0.999
INPUT_ERROR_FLOOR = 1e-4  # an error "over its inputs'" is taken over at least this (exact inputs: 0)
# Readers found past these see the same values: the reader that judges a node is the first other op
COPY_OPS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Expand"}
JUMP_RULE = (f"A node **jumps** when it overflows to inf/NaN where its inputs were finite, or when its relative "
             f"error (max |fp16 − fp32| over max |fp32| of its output) is ≥ {JUMP_FACTOR:g}× its inputs' and large "
             f"(≥ {JUMP_FLOOR:g}, or a cosine below {JUMP_COSINE:g}) and reaches what reads it: a reader's error "
             f"(past reshapes and casts) is also ≥ {JUMP_FACTOR:g}× those inputs' and large, or nothing compared "
             "reads it (the tower's output). A large error its readers do not carry is **contained** (a mean of "
             "values near zero: large beside itself, negligible beside the values it is subtracted from): listed, "
             "not a jump.")
SLICE_BYTES = 64 * 2**20  # a slice's weights plus one batch of its exposed outputs, per run (fp32 and fp16)


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
    contained: bool = False  # large and added here, yet not carried by its readers
    why: str = ""  # what decided a jump or a containment

    @property
    def scope(self):
        return scope_of(self.name)

    @property
    def large(self):
        return self.max_rel >= JUMP_FLOOR or self.min_cosine < JUMP_COSINE

    @property
    def harm(self):
        """The error this node adds where its readers see it: ``introduced``, none when contained."""
        return 0.0 if self.contained else self.introduced

    def update(self, golden, simulated):
        """Fold in one batch: max abs and relative error (over the batch's max |fp32|), min cosine per
        sample, overflow (finite in fp32, inf/NaN here). Products are summed in float64."""
        if not golden.size:
            return
        extremes = np.array([golden.max(), golden.min(), simulated.max(), simulated.min()], np.float64)
        if not np.isfinite(extremes).all():
            # a causal mask's -inf in both, or an overflow: 0 there (an overflow still lowers the cosine)
            finite = np.isfinite(golden)
            both = finite & np.isfinite(simulated)
            self.overflow |= not np.array_equal(both, finite)
            golden, simulated = np.where(finite, golden, 0), np.where(both, simulated, 0)
            extremes = np.array([golden.max(), golden.min()], np.float64)
        if np.abs(extremes).max() > 1e15:  # squares past float32's range
            golden, simulated = golden.astype(np.float64), simulated.astype(np.float64)
        diff = golden - simulated
        error, scale = float(max(diff.max(), -diff.min())), float(max(golden.max(), -golden.min()))
        self.max_abs = max(self.max_abs, error)
        self.max_rel = max(self.max_rel, error / scale if scale else 0.0)
        if self.overflow:
            self.max_rel = self.max_abs = float("inf")
        rows_g = golden.reshape(len(golden), -1) if golden.ndim > 1 else golden.reshape(1, -1)
        rows_s = simulated.reshape(rows_g.shape)

        def dots(a, b):
            return np.add.reduce(a * b, axis=1, dtype=np.float64)

        norms = np.sqrt(dots(rows_g, rows_g) * dots(rows_s, rows_s))
        with np.errstate(invalid="ignore", divide="ignore"):
            cosines = np.where(norms > 0, dots(rows_g, rows_s) / norms, 1.0)
        self.min_cosine = min(self.min_cosine, float(np.where(np.isfinite(cosines), cosines, -1.0).min()))


def traced_nodes(graph, floats):
    """The nodes whose float outputs (``floats``: ``model.export.float_outputs``) the comparison reads, in
    graph (topological) order."""
    nodes = []
    for depth, node in enumerate(graph.node):
        if node.op_type in ("Shape", "Constant") or not node.output or node.output[0] not in floats:
            continue
        nodes.append(NodeError(node.name, node.op_type, node.output[0], depth, list(node.input)))
    return nodes


# --- the graph in slices ---------------------------------------------------------------------------

@dataclass
class GraphSlice:
    """Consecutive nodes run as a graph of their own."""

    nodes: list  # NodeProtos, in an order that runs
    weights: list  # the initializers they read
    inputs: list  # values from earlier slices or the graph's input
    outputs: list  # what later slices or the graph's output read, then the exposed values
    exposed: list  # outputs compared here
    carry: set = field(default_factory=set)  # the values held for later slices once this one ran


class SlicedGraph:
    """The graph at ``source`` cut into slices that run one after another, each holding at most
    ``budget`` bytes of weights and of one batch of its exposed outputs (a single larger node alone).
    Running it costs memory for one slice, not for the whole graph and every exposed output at once;
    weights in external data are read slice by slice. ``batch_size``: the batch the sizes are
    estimated for (shape inference with it)."""

    def __init__(self, source, batch_size):
        import onnx

        from ..model.export import float_names, inferred_types

        self.source = Path(source)
        self.model = onnx.load(str(source), load_external_data=False)
        graph = self.model.graph
        self.types = inferred_types(self.model, batch_size)
        self.input_name, self.output_name = graph.input[0].name, graph.output[0].name
        self.floats = float_names(graph, self.types)
        self.weights = {init.name: init for init in graph.initializer}
        self.sizes = {name: _value_bytes(value) for name, value in self.types.items()}
        self.largest = max((size for size in self.sizes.values() if size), default=0)
        self.slices = []

    def nbytes(self, name):
        """Bytes of a weight or of a value for one batch; a value of unknown size counts as the largest known."""
        if name in self.weights:
            init = self.weights[name]
            return int(np.prod(init.dims)) * _itemsize(init.data_type)
        size = self.sizes.get(name)
        return self.largest if size is None else size

    def cut(self, exposed, budget=SLICE_BYTES):
        """Slice the graph so that each slice's weights and ``exposed`` outputs stay within ``budget``."""
        graph = self.model.graph

        def cost(node, weights):
            return (sum(self.nbytes(name) for name in set(node.input) if name in self.weights and name not in weights)
                    + sum(self.nbytes(name) for name in node.output if name in exposed))

        groups, current, held, weights = [], [], 0, set()
        for node in weights_where_read(graph.node, self.weights):
            if current and held + cost(node, weights) > budget:
                groups.append(current)
                current, held, weights = [], 0, set()
            held += cost(node, weights)
            current.append(node)
            weights.update(name for name in node.input if name in self.weights)
        groups.append(current)
        last_read = {name: len(groups) for name in (value.name for value in graph.output)}
        for index, nodes in enumerate(groups):
            for node in nodes:
                for name in node.input:
                    last_read[name] = max(last_read.get(name, index), index)
        made_by = {value.name: -1 for value in graph.input}
        self.slices = []
        for index, nodes in enumerate(groups):
            own = {name for node in nodes for name in node.output}
            made_by.update(dict.fromkeys(own, index))
            carry = {name for name, last in last_read.items() if last > index and made_by.get(name, len(groups)) <= index}
            inputs = list(dict.fromkeys(name for node in nodes for name in node.input
                                        if name and name not in own and name not in self.weights))
            shown = [name for node in nodes for name in node.output if name in exposed]
            outputs = [name for node in nodes for name in node.output if name in carry and name not in shown]
            weights_read = sorted({name for node in nodes for name in node.input if name in self.weights})
            self.slices.append(GraphSlice(nodes, weights_read, inputs, outputs + shown, shown, carry))
        return self.slices

    def model_of(self, index):
        """Slice ``index`` as a model of its own, its weights read (from external data where they are)."""
        from onnx import external_data_helper, helper

        part = self.slices[index]

        def declared(name):
            return helper.make_tensor_value_info(name, self.types[name].elem_type, None)

        graph = helper.make_graph(part.nodes, f"{self.model.graph.name}_{index}", [declared(n) for n in part.inputs],
                                  [declared(n) for n in part.outputs], [self.weights[n] for n in part.weights])
        model = helper.make_model(graph, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
        external_data_helper.load_external_data_for_model(model, str(self.source.parent))
        return model


def _itemsize(data_type):
    from onnx.helper import tensor_dtype_to_np_dtype

    return tensor_dtype_to_np_dtype(data_type).itemsize


def _value_bytes(value):
    """Bytes of an inferred value (``TypeProto.Tensor``), or None where a dimension is unknown."""
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in value.shape.dim]
    if not value.HasField("shape") or None in dims:
        return None
    return int(np.prod(dims)) * _itemsize(value.elem_type)


def weights_where_read(nodes, weights):
    """``nodes`` in an order that still runs, each node computed from weights alone (a Constant, the
    exporter's Identity of a shared weight) moved to just before its first reader: a slice then never
    holds weights for a later one."""
    known, static = set(weights), {}
    for index, node in enumerate(nodes):
        if all(not name or name in known for name in node.input):
            known.update(node.output)
            static.update(dict.fromkeys(node.output, index))
    order, placed = [], set()

    def place(index):
        if index in placed:
            return
        placed.add(index)
        for name in nodes[index].input:
            if name in static:
                place(static[name])
        order.append(nodes[index])

    for index, node in enumerate(nodes):
        if not node.output or node.output[0] not in static:
            place(index)
    for index in sorted(set(static.values())):  # read by no other node
        place(index)
    return order


def _session(model_proto):
    """An ONNX Runtime session (the kit's CPU options) on an in-memory graph, made from a file: a session
    made from bytes keeps them for its whole life, a second copy of the weights. Without the memory arena,
    which would keep each slice session's largest activations for as long as the session lives. Basic
    graph optimizations only: the extended ones fuse chains (LayerNorm, GELU) into one fp32 kernel, which
    skips the rounding between the fused nodes (ONNX Runtime 1.16 even fuses across it into a kernel it
    then cannot run)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    options = session_options()
    options.enable_cpu_mem_arena = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory(prefix="openclip_precision_") as folder:
        path = Path(folder) / "slice.onnx"
        onnx.save(model_proto, str(path))
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_slice(session, part, values):
    """One slice on ``values`` (holding at least its inputs): (its outputs, the values held after it)."""
    outputs = dict(zip(part.outputs, session.run(part.outputs, {name: values[name] for name in part.inputs})))
    return outputs, {name: value for name, value in {**values, **outputs}.items() if name in part.carry}


def as_is(model):
    return model


def fp16_simulation(sliced, keep=()):
    """What makes a slice of ``sliced`` round like fp16 with ``keep`` in fp32: a weight is rounded in
    every slice when any node outside ``keep`` reads it, as in the whole graph."""
    from ..model.export import round_like_fp16, rounded_weights

    rounded = rounded_weights(sliced.model.graph, keep)
    return lambda model: round_like_fp16(model, sliced.floats, keep, rounded)


def run_slice_major(sliced, transforms, batches):
    """Every batch through one slice before the next, once per transform (``as_is``: fp32; the fp16
    simulation): yields (slice, batch index, [its outputs in each run]). Only the values later slices
    read are held between slices; one slice's sessions exist at a time."""
    held = [[{sliced.input_name: batch} for batch in batches] for _ in transforms]
    for index, part in enumerate(sliced.slices):
        sessions = [_session(transform(sliced.model_of(index))) for transform in transforms]
        for k in range(len(batches)):
            outputs = []
            for session, values in zip(sessions, held):
                result, values[k] = _run_slice(session, part, values[k])
                outputs.append(result)
            yield part, k, outputs
        del sessions  # before the next slice's are made


def run_batch_major(sliced, transform, batches):
    """The graph's output for each batch, run through every slice in turn (one session per slice,
    made once): memory for one batch, whatever the number of batches."""
    sessions = [_session(transform(sliced.model_of(index))) for index in range(len(sliced.slices))]
    for batch in batches:
        values = {sliced.input_name: batch}
        for part, session in zip(sliced.slices, sessions):
            _, values = _run_slice(session, part, values)
        yield values[sliced.output_name]


def locate(source, inputs, batch_size=2, budget=SLICE_BYTES):
    """Per-node error of the fp16 simulation against fp32 on ``inputs`` (an array of samples); returns
    the NodeErrors in graph order, with ``introduced`` and each ``jump`` marked. ``budget``: see
    ``SlicedGraph``."""
    sliced = SlicedGraph(source, batch_size)
    nodes = traced_nodes(sliced.model.graph, sliced.floats)
    by_output = {node.output: node for node in nodes}
    sliced.cut(set(by_output), budget)
    batches = batches_of(inputs, batch_size)
    runs = run_slice_major(sliced, [as_is, fp16_simulation(sliced)], batches)
    for part, _, (expected, got) in tqdm(runs, total=len(sliced.slices) * len(batches), desc="locate",
                                         unit="slice-batch"):
        for name in part.exposed:
            by_output[name].update(expected[name], got[name])
    return mark_jumps(nodes, sliced.model.graph, sliced.floats)


def locate_dump(source, batches, dump_folder, budget=SLICE_BYTES):
    """Per-node error of an NPU's operator dump against the fp32 graph: ``batches`` are the inputs of
    the dumped executions, in order (the k-th dump of each op is the k-th batch's). Only nodes whose
    output the dump holds are compared (atc fuses others away). Returns (NodeErrors, notes)."""
    from ..ascend.dump import dump_files, outputs_by_node, read_dump_file

    sliced = SlicedGraph(source, len(batches[0]))
    records = [read_dump_file(path) for path in tqdm(dump_files(dump_folder), desc="read dump", unit="file")]
    dumped, unmatched = outputs_by_node(records, sliced.model.graph)
    traced = traced_nodes(sliced.model.graph, sliced.floats)
    nodes = [node for node in traced if node.output in dumped]
    if not nodes:
        raise KitError(f"{dump_folder}: no dumped op names a node of {source} (first dumped: "
                       f"{records[0].op_name!r}); dump the OM compiled from this ONNX graph")
    executions = min(len(dumped[node.output]) for node in nodes)
    if executions < len(batches):
        raise KitError(f"{dump_folder}: {executions} dumped executions for {len(batches)} input batches; give the "
                       "inputs of the dumped run only")
    by_output = {node.output: node for node in nodes}
    sliced.cut(set(by_output), budget)
    mismatched = set()
    for part, k, (expected,) in run_slice_major(sliced, [as_is], [np.ascontiguousarray(b) for b in batches]):
        for name in part.exposed:
            got = dumped[name][k].array()
            if got.size != expected[name].size:
                mismatched.add(by_output[name].name)
                continue
            by_output[name].update(expected[name], got.reshape(expected[name].shape))
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
    return mark_jumps(nodes, sliced.model.graph, sliced.floats), notes


def first_readers(graph, floats, compared):
    """A function: tensor → the compared nodes that first read its value, past copies and past nodes
    not compared (atc fused them)."""
    readers = {}
    for node in graph.node:
        if node.output and node.output[0] in floats:
            for name in set(node.input):
                readers.setdefault(name, []).append(node)

    def reached(tensor):
        found, seen, frontier = [], set(), [tensor]
        while frontier:
            for node in readers.get(frontier.pop(), ()):
                if node.output[0] in seen:
                    continue
                seen.add(node.output[0])
                if node.output[0] in compared and node.op_type not in COPY_OPS:
                    found.append(compared[node.output[0]])
                else:
                    frontier.append(node.output[0])
        return found

    return reached


def mark_jumps(nodes, graph, floats):
    """Each node's ``introduced`` error (over the worst its inputs pass on), ``jump`` and ``contained``
    by the rule in ``JUMP_RULE``; ``graph``: the whole graph (its readers), ``floats``: its float
    values. Returns ``nodes``."""
    compared = {node.output: node for node in nodes}
    reached = first_readers(graph, floats, compared)
    passed = {}  # the error each node's readers receive from it: a contained node passes on its inputs'
    for node in nodes:
        upstream = max((passed[name] for name in node.inputs if name in passed), default=0.0)
        base = max(upstream, INPUT_ERROR_FLOOR)
        if node.overflow:
            node.introduced = 0.0 if np.isinf(upstream) else float("inf")
            node.jump = not np.isinf(upstream)
            node.why = "overflow: always a jump" if node.jump else ""
        else:
            node.introduced = node.max_rel / base
            if node.introduced >= JUMP_FACTOR and node.large:
                readers = reached(node.output)
                carrier = next((r for r in readers if r.max_rel >= JUMP_FACTOR * base and r.large), None)
                node.jump = bool(carrier or not readers)
                node.contained = not node.jump
                if carrier is not None:
                    node.why = (f"read by {carrier.name}: relative error {carrier.max_rel:.3g}, "
                                f"cosine {cosine_text(carrier.min_cosine)}")
                elif not readers:
                    node.why = "no compared node reads it (the tower's output): its own error is the harm"
                else:
                    worst = max(readers, key=lambda r: r.max_rel)
                    node.why = (f"its readers at most relative error {worst.max_rel:.3g} "
                                f"(cosine ≥ {cosine_text(min(r.min_cosine for r in readers))})")
        passed[node.output] = upstream if node.contained else node.max_rel
    return nodes


def first_jump(nodes):
    return next((node for node in nodes if node.jump), None)


def scope_summary(nodes):
    """Per scope, in graph order: its worst node, overflow, and the error it introduces, over the nodes
    whose error reaches their readers (the contained ones counted apart)."""
    scopes = {}
    for node in nodes:
        entry = scopes.setdefault(node.scope, {"scope": node.scope, "nodes": 0, "contained": 0, "max_rel": 0.0,
                                               "min_cosine": 1.0, "overflow": False, "introduced": 0.0,
                                               "worst": node.name, "first_depth": node.depth})
        entry["nodes"] += 1
        if node.contained:
            entry["contained"] += 1
            continue
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

    def __init__(self, source, inputs, other_embeds, owners, tower, recall_bound, min_cosine, batch_size=16,
                 budget=SLICE_BYTES):
        self.inputs, self.owners, self.tower = inputs, owners, tower
        self.other, self.recall_bound, self.min_cosine, self.batch_size = other_embeds, recall_bound, min_cosine, batch_size
        self.graph = SlicedGraph(source, batch_size)  # read once, its slices rounded per keep set
        self.graph.cut(set(), budget)
        self.fp32_embeds = self._embed(as_is)
        self.fp32 = self._metrics(self.fp32_embeds)
        self.evaluations = 0

    def _embed(self, transform):
        return np.concatenate(list(run_batch_major(self.graph, transform, batches_of(self.inputs, self.batch_size))))

    def _metrics(self, embeds):
        images, texts = (embeds, self.other) if self.tower == "vision" else (self.other, embeds)
        return evaluate_retrieval(images, texts, self.owners).metrics

    def evaluate(self, keep):
        self.evaluations += 1
        embeds = self._embed(fp16_simulation(self.graph, keep))
        broken = ~np.isfinite(embeds).all(axis=1)  # an overflow reached the embedding: no direction at all
        embeds[broken] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            metrics = self._metrics(embeds)
            cosine = compare_embeddings(self.fp32_embeds, embeds)["min_cosine"]
        within = all(abs(metrics[key] - self.fp32[key]) <= self.recall_bound + 1e-12 for key in RECALL_KEYS)
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
    ranked = sorted(by_scope, key=lambda scope: (-max(n.harm for n in by_scope[scope]),
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
        ordered = [node.name for node in sorted(by_scope[scope], key=lambda node: (not node.overflow, -node.harm))]
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
                "introduced", "contained", "jump", "why"]


def node_rows(nodes):
    return [[node.depth, node.name, node.op_type, node.scope, f"{node.max_abs:.3e}", f"{node.max_rel:.3e}",
             cosine_text(node.min_cosine), int(node.overflow), f"{node.introduced:.3g}", int(node.contained),
             int(node.jump), node.why] for node in nodes]


def verdict_lines(nodes):
    """The first jump and why it is one, or that there is none and how close fp16 stays; the contained
    nodes a reader of the CSV would otherwise take for jumps."""
    jump = first_jump(nodes)
    if jump is not None:
        lines = [f"First jump: **{jump.name}** ({jump.op_type}, scope `{jump.scope}`): relative error "
                 f"{jump.max_rel:.3g}{' (overflow to inf/NaN)' if jump.overflow else ''}, "
                 f"{jump.introduced:.3g}× its inputs'; {jump.why}."]
    else:
        last = nodes[-1]
        passed = max((node for node in nodes if not node.contained), key=lambda node: node.max_rel)
        lines = [f"No node jumps: fp16 is within relative error {last.max_rel:.3g} and cosine {cosine_text(last.min_cosine)} of "
                 f"fp32 at the last node compared (`{last.name}`); the largest error any node passes on to its readers "
                 f"is relative {passed.max_rel:.3g} (`{passed.name}`)."]
    contained = [node for node in nodes if node.contained]
    if contained:
        shown = sorted(contained, key=lambda node: -node.max_rel)[:3]
        lines += ["", f"{len(contained)} node(s) contained — a large error of their own that their readers do not carry:"]
        lines += [f"- `{node.name}` ({node.op_type}): relative error {node.max_rel:.3g}, cosine {cosine_text(node.min_cosine)}; "
                  f"{node.why}" for node in shown]
    return lines


def write_locate_report(nodes, out_dir, tower, samples, against="fp16 simulation", notes=()):
    """``node_errors_{tower}.csv`` (every node), ``.md`` (the first jump, the rule, the worst scopes) and
    ``.png`` (relative error against depth); ``against`` names what was compared with fp32 (the
    simulation, or an NPU dump); returns the Markdown text."""
    from ..markdown import markdown_table, write_csv

    stem = Path(out_dir) / f"node_errors_{tower}"
    write_csv(stem.with_suffix(".csv"), NODE_COLUMNS, node_rows(nodes))
    scopes = sorted(scope_summary(nodes), key=lambda entry: (-entry["introduced"], entry["first_depth"]))
    lines = [f"# {against} against fp32: {tower} tower, {len(nodes)} nodes, {samples} samples", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += verdict_lines(nodes) + ["", JUMP_RULE, ""]
    rows = [[f"`{e['scope']}`", e["nodes"], e["contained"] or "", f"{e['max_rel']:.3g}", cosine_text(e["min_cosine"]),
             "yes" if e["overflow"] else "", f"{e['introduced']:.3g}", f"`{e['worst']}`"] for e in scopes[:15]]
    lines += ["Scopes by the error they introduce where their readers see it (worst 15; contained nodes apart):", "",
              markdown_table(["scope", "nodes", "contained", "max rel error", "min cosine", "overflow", "introduced ×",
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
    carried = [node for node in finite if not node.contained]
    axis.semilogy([n.depth for n in carried], [max(n.max_rel, 1e-9) for n in carried], ".", markersize=3,
                  label="max relative error")
    contained = [node for node in finite if node.contained]
    if contained:
        axis.semilogy([n.depth for n in contained], [n.max_rel for n in contained], "o", color="grey", markersize=4,
                      fillstyle="none", label="contained (its readers do not carry it)")
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


def run_search(job, samples=16, recall_bound=RECALL_BOUND, min_cosine=MIN_COSINE, soc_version=""):
    """Locate, then search; writes ``keep_dtype_{tower}.cfg`` and ``precision_{tower}.json``. The bounds are the
    verdict's: a keep set is good enough where the report's PASS would hold."""
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
             f"fp16:       {r5(record['fp16'])}, min cosine {cosine_text(record['fp16_min_cosine'])}"]
    if not record["keep"] and record["found"]:
        lines.append(f"fp16 is within bounds (recall@5 ±{record['recall_bound']:g}, cosine ≥ {record['min_cosine_bound']:g}): "
                     "nothing to keep in fp32; keep_dtype file left empty")
    elif not record["found"]:
        lines.append("no keep set found within bounds among the candidate nodes"
                     + (" (vector ops only: 310P)" if record["vector_ops_only"] else "") + "; keep_dtype file left empty")
    else:
        lines.append(f"keep fp32: {r5(record['kept'])}, min cosine {cosine_text(record['kept_min_cosine'])} — "
                     f"{len(record['keep'])} nodes in {', '.join(record['keep_scopes'])}")
    if record["recall_bound"] < record["recall_resolution"]:
        lines.append(f"note: one query moves recall by {record['recall_resolution']:.4f} on this set, more than the "
                     "bound; a larger set judges finer")
    return "\n".join(lines)
