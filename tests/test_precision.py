"""Where fp16 breaks and the smallest fp32 keep set: planted faults (an overflow, an offset fp16 cannot
resolve, weights past fp16's range) are located and repaired by exactly the nodes that need fp32, a
healthy model is left alone, and the keep file goes to atc as PRECISION=keep:FILE."""

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from openclip_ascend.ascend.atc import plan_jobs
from openclip_ascend.evaluate.precision import (NodeError, SlicedGraph, as_is, export_for_precision, fp16_simulation,
                                                locate, mark_jumps, prepare, run_batch_major, run_locate, run_search,
                                                run_slice_major, traced_nodes)
from openclip_ascend.files import KitError
from openclip_ascend.model.export import export_model, onnx_path, round_like_fp16
from openclip_ascend.model.loading import TINY_MODEL
from openclip_ascend.run.runner import batches_of

ROOT = Path(__file__).resolve().parents[1]
PLANTED = "resblocks.0"  # scopes read transformer/resblocks.0/… (or resblocks.0/… where the pooled rewrite runs the blocks)


def precision_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "openclip_precision.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def planted_job(tiny_model, prep_dir, out_dir, plant):
    """The vision precision job of a deep copy of the tiny model whose weights ``plant`` edited."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        plant(model)
    prefix = out_dir / "models" / "planted"
    export_model(model, prefix, check=False)
    return prepare(prefix, prep_dir, "vision", out_dir)


def node_rows(out_dir):
    """locate's per-node CSV, depth read as a number and overflow as a flag."""
    rows = list(csv.DictReader(open(out_dir / "node_errors_vision.csv")))
    return [{**row, "depth": int(row["depth"]), "overflow": row["overflow"] == "1"} for row in rows]


def test_planted_overflow_is_located_to_its_block(planted_weights, prep_dir, tmp_path):
    result = precision_cli("locate", "--model-name", TINY_MODEL, "--pretrained", planted_weights, "--prep", prep_dir,
                           "--tower", "vision", "--output-dir", tmp_path, "--samples", 4)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(tmp_path / "node_errors_vision.csv")))
    first = next(row for row in rows if row["jump"] == "1")
    assert first["scope"].endswith(f"{PLANTED}/ln_2") and first["overflow"] == "1"
    assert all(row["overflow"] == "0" for row in rows[:rows.index(first)])  # nothing broke before it
    summary = (tmp_path / "node_errors_vision.md").read_text()
    assert f"{PLANTED}/ln_2/" in summary.split("First jump: ")[1].splitlines()[0] and "overflow" in summary
    assert (tmp_path / "node_errors_vision.png").read_bytes()[:4] == b"\x89PNG"


def test_planted_overflow_is_repaired_by_the_smallest_keep_set(planted_weights, prep_dir, tmp_path):
    result = precision_cli("search", "--model-name", TINY_MODEL, "--pretrained", planted_weights, "--prep", prep_dir,
                           "--tower", "vision", "--output-dir", tmp_path, "--samples", 4)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "precision_vision.json").read_text())
    # the planted LayerNorm's scale, shift and cast overflow; its mean, variance and division do not,
    # and the product after it reads an fp32 input: exactly those three nodes, nothing else in the scope
    (scope,) = record["keep_scopes"]
    assert scope.endswith(f"{PLANTED}/ln_2")
    assert sorted(name.rsplit("/", 1)[1] for name in record["keep"]) == ["Add_1", "Cast", "Mul"]
    fp32, fp16, kept = record["fp32"], record["fp16"], record["kept"]
    assert fp16["image_retrieval_recall@5"] < fp32["image_retrieval_recall@5"] - 0.1  # plain fp16 broke it
    for key in ("image_retrieval_recall@5", "text_retrieval_recall@5"):
        assert abs(kept[key] - fp32[key]) <= 0.002
    assert record["kept_min_cosine"] >= 0.99
    keep_file = (tmp_path / "keep_dtype_vision.cfg").read_text().split()
    assert keep_file == record["keep"]
    assert set(record["bought"]) == set(record["keep_scopes"])
    assert "keep fp32:" in result.stdout

    # the keep file as an atc preset: the names reach --keep_dtype, and only graph nodes are accepted
    prefix = tmp_path / "models" / "openclip_ascend_tiny"
    (job,) = plan_jobs(prefix, ["vision"], [4], "Ascend910B4", tmp_path / "om",
                       precision_mode=f"keep:{tmp_path / 'keep_dtype_vision.cfg'}")
    assert "--precision_mode=force_fp16" in job.command and job.keep_dtype == record["keep"]
    (tmp_path / "empty.cfg").write_text("")  # nothing to keep: plain fp16, no --keep_dtype naming an unwritten file
    (job,) = plan_jobs(prefix, ["vision"], [4], "Ascend910B4", tmp_path / "om", precision_mode=f"keep:{tmp_path / 'empty.cfg'}")
    assert not any(arg.startswith(("--keep_dtype", "--precision_mode")) for arg in job.command) and job.keep_dtype == []
    (tmp_path / "bad.cfg").write_text("/no/such/node\n")
    with pytest.raises(KitError, match="nodes not in this graph"):
        plan_jobs(prefix, ["vision"], [4], "Ascend910B4", tmp_path / "om", precision_mode=f"keep:{tmp_path / 'bad.cfg'}")


def test_a_healthy_model_is_not_repaired(prep_dir, tmp_path, capsys):
    job = prepare(export_for_precision(TINY_MODEL, None, tmp_path), prep_dir, "text", tmp_path)
    record = run_search(job, samples=4, recall_bound=0.002, min_cosine=0.99)
    assert record["found"] and record["keep"] == [] and record["fp16"] == record["fp32"]
    assert record["fp16_min_cosine"] > 0.999
    assert "nothing to keep in fp32" in capsys.readouterr().out
    assert (tmp_path / "keep_dtype_text.cfg").read_text() == ""


def weights_past_fp16_range(model):
    """Vision block 0: ln_2's channel 0 scaled down by 1e6 and the c_fc weights that read it scaled up
    by 1e6 — the same function in fp32, but those weights (up to ~2.7e5) pass fp16's 65504. Only the
    product itself kept in fp32 reads them unrounded; no vector op can stand in for it."""
    block = model.visual.transformer.resblocks[0]
    block.ln_2.weight[0] /= 1e6
    block.ln_2.bias[0] /= 1e6
    block.mlp.c_fc.weight[:, 0] *= 1e6


def test_310p_keeps_no_matrix_product(tiny_model, prep_dir, tmp_path, capsys):
    """On 910B the product is the whole fix; 310P has no fp32 Cube path, so its search is never offered
    the product and finds no vector-only fix; a keep file naming a MatMul is refused for 310P."""
    job = planted_job(tiny_model, prep_dir, tmp_path, weights_past_fp16_range)
    on_910b = run_search(job, samples=2, recall_bound=0.002, min_cosine=0.99, soc_version="Ascend910B4")
    assert on_910b["found"] and on_910b["fp16_min_cosine"] < 0.99
    assert [name.split(PLANTED)[-1] for name in on_910b["keep"]] == ["/mlp/c_fc/MatMul"]
    keep_910b = tmp_path / "keep_910b.cfg"
    keep_910b.write_text((tmp_path / "keep_dtype_vision.cfg").read_text())
    capsys.readouterr()

    on_310p = run_search(job, samples=2, recall_bound=0.002, min_cosine=0.99, soc_version="Ascend310P3")
    assert on_310p["vector_ops_only"] and not on_310p["found"] and on_310p["keep"] == []
    assert (tmp_path / "keep_dtype_vision.cfg").read_text() == ""
    assert "no keep set found within bounds among the candidate nodes (vector ops only: 310P)" in capsys.readouterr().out
    with pytest.raises(KitError, match="310P can only run on the AI CPU"):
        plan_jobs(tmp_path / "models" / "planted", ["vision"], [4], "Ascend310P3", tmp_path / "om",
                  precision_mode=f"keep:{keep_910b}")


OFFSET = 3000.0  # fp16 stores numbers near 3000 to the nearest 2: coarser than the patch features differ


def add_offset(model):
    """The same constant added to every channel of every position embedding: ln_pre subtracts each token's
    mean, so fp32 computes the same function, but fp16 cannot hold the sum finely enough to recover the
    features from it — a genuine loss (the embeddings lose their direction), with no overflow anywhere."""
    model.visual.positional_embedding.add_(OFFSET)


@pytest.fixture(scope="module")
def offset_search(tiny_model, prep_dir, tmp_path_factory):
    """The search on the offset model: (its record, locate's node rows, the name of the Add that reads
    the offset position table)."""
    from onnx import TensorProto, load, numpy_helper

    out = tmp_path_factory.mktemp("offset")
    job = planted_job(tiny_model, prep_dir, out, add_offset)
    record = run_search(job, samples=4, recall_bound=0.002, min_cosine=0.99)
    graph = load(str(job.source)).graph
    offset_tables = {init.name for init in graph.initializer
                     if init.data_type == TensorProto.FLOAT and numpy_helper.to_array(init).min() > OFFSET / 2}
    (offset_add,) = [node.name for node in graph.node if offset_tables & set(node.input)]
    return record, node_rows(out), offset_add


def test_a_precision_loss_without_overflow_is_located(offset_search):
    """Nothing overflows, yet the error jumps where the offset is added or where ln_pre subtracts it."""
    _, rows, offset_add = offset_search
    assert not any(row["overflow"] for row in rows)
    jumps = [row for row in rows if row["jump"] == "1"]
    assert jumps, "a loss that breaks the embeddings without overflowing must still be a jump"
    by_name = {row["node"]: row for row in rows}
    end_of_ln_pre = max(row["depth"] for row in rows if row["scope"].split("/")[-1] == "ln_pre")
    assert by_name[offset_add]["depth"] <= jumps[0]["depth"] <= end_of_ln_pre


def test_the_keep_set_is_the_one_node_that_needs_fp32(offset_search):
    """The offset lives in one Add: keeping it in fp32 is the whole fix. The search first needs ten
    scopes (a wider set that also works), so this holds only if it prunes the unneeded scopes and narrows
    the kept one — whose worst nodes by error include matrix products it does not need — to that Add."""
    record, _, offset_add = offset_search
    assert record["fp16_min_cosine"] < 0.99 and record["found"]
    assert any(step["step"] == "keep worst" and step["ok"] and step["scopes"] > 1 for step in record["steps"])
    assert record["keep"] == [offset_add]
    assert record["kept_min_cosine"] >= 0.99
    for key in ("image_retrieval_recall@5", "text_retrieval_recall@5"):
        assert abs(record["kept"][key] - record["fp32"][key]) <= 0.002


def test_a_keep_file_from_another_graph_never_reaches_atc(tiny_onnx, tmp_path):
    """Older atc (CANN 6–7.0, the stand-in with FAKE_ATC_OLD=1) fails the whole compile with E10003 on a
    --keep_dtype name missing from the graph: the kit checks the names first and stops in one line,
    naming the node, before any atc runs. Here the file names a scope another exporter writes."""
    keep = tmp_path / "keep_dtype_vision.cfg"
    keep.write_text("/transformer/resblocks.0/ln_2/Mul\n")
    fakes, log = ROOT / "tests" / "fakes", tmp_path / "tools.log"
    env = {**os.environ, "PATH": f"{fakes / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{fakes}{os.pathsep}{ROOT}", "FAKE_ATC_OLD": "1", "FAKE_TOOL_LOG": str(log)}
    result = subprocess.run([sys.executable, str(ROOT / "convert" / "onnx2om.py"), "--onnx-prefix", str(tiny_onnx),
                             "--towers", "vision", "--batch-sizes", "4", "--soc-version", "Ascend910B4",
                             "--precision-mode", f"keep:{keep}", "--output-dir", str(tmp_path / "om")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "nodes not in this graph (first: /transformer/resblocks.0/ln_2/Mul)" in result.stderr
    assert not log.exists() or all(json.loads(line)["tool"] != "atc" for line in log.read_text().splitlines())


def zero_mean_stem(model):
    """The stem made zero-mean over channels (the patch filters, the class and every position embedding
    less their channel mean): ln_pre's mean is ~1e-8 in fp32, so fp16 storage leaves it a huge error
    relative to itself and a random direction — yet ln_pre subtracts it from values of order 1, where
    that error is ~1e-4 of them: the near-zero-mean residual stream of a randomly initialised ViT-B-32."""
    visual = model.visual
    visual.conv1.weight.sub_(visual.conv1.weight.mean(0, keepdim=True))
    visual.class_embedding.sub_(visual.class_embedding.mean())
    visual.positional_embedding.sub_(visual.positional_embedding.mean(1, keepdim=True))


def test_a_mean_near_zero_is_contained_not_a_jump(tiny_model, prep_dir, tmp_path):
    job = planted_job(tiny_model, prep_dir, tmp_path, zero_mean_stem)
    run_locate(job, samples=4)
    rows = {row["node"]: row for row in node_rows(tmp_path)}
    (mean,), (reader,) = ([row for name, row in rows.items() if name.endswith(f"ln_pre/{op}")] for op in ("ReduceMean", "Sub"))
    # what the arithmetic alone calls a jump: large relative to itself, ≥ 10× its input's, direction lost
    assert float(mean["max_rel_error"]) > 1 and float(mean["introduced"]) > 100 and float(mean["min_cosine"]) < 0.9
    assert float(reader["max_rel_error"]) < 0.01 and float(reader["min_cosine"]) > 0.9999  # what ln_pre passes on
    assert mean["contained"] == "1" and mean["jump"] == "0" and mean["why"].startswith("its readers at most")
    assert not [row["node"] for row in rows.values() if row["jump"] == "1"]
    summary = (tmp_path / "node_errors_vision.md").read_text()
    verdict = summary.split("\n\n")[1]
    assert verdict.startswith("No node jumps: fp16 is within relative error") and "First jump" not in summary
    assert f"`{mean['node']}` (ReduceMean)" in summary and "A node **jumps** when" in summary


def rule_case(errors, compared=("mean", "reshape", "centre", "square")):
    """The rule on a four-node graph ``x → mean → reshape → centre (x − it) → square → y`` whose node
    errors are given as {node: (max_rel, min_cosine, overflow)} (the rest exact); ``compared``: the
    nodes with a measurement (a dump lacks those atc fused). Returns {node: NodeError}."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], name="mean"),
             helper.make_node("Reshape", ["m", "shape"], ["r"], name="reshape"),
             helper.make_node("Sub", ["x", "r"], ["c"], name="centre"),
             helper.make_node("Mul", ["c", "c"], ["y"], name="square")]
    graph = helper.make_graph(nodes, "rule", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor("shape", TensorProto.INT64, [2], [2, 1])])
    measured = []
    for depth, node in enumerate(nodes):
        if node.name in compared:
            rel, cosine, overflow = errors.get(node.name, (0.0, 1.0, False))
            measured.append(NodeError(node.name, node.op_type, node.output[0], depth, list(node.input),
                                      max_rel=rel, min_cosine=cosine, overflow=overflow))
    return {node.name: node for node in mark_jumps(measured, graph, {"m", "r", "c", "y"})}


NEAR_ZERO_MEAN = (5.0, -0.2, False)  # large relative to itself, direction lost


@pytest.mark.parametrize("errors, compared, jumps, contained", [
    # the mean's error stops at its reader (the reshape only repeats it): contained, and so is its copy
    ({"mean": NEAR_ZERO_MEAN, "reshape": NEAR_ZERO_MEAN, "centre": (2e-3, 1.0, False)}, None, [], ["mean", "reshape"]),
    # the reader carries it: the mean is the jump
    ({"mean": NEAR_ZERO_MEAN, "reshape": NEAR_ZERO_MEAN, "centre": (0.3, 0.95, False),
      "square": (0.5, 0.9, False)}, None, ["mean"], []),
    # an overflow is a jump whatever its readers show
    ({"mean": (float("inf"), -1.0, True), "reshape": (float("inf"), -1.0, True), "centre": (2e-3, 1.0, False)},
     None, ["mean"], []),
    # a dump without the subtraction (fused by atc): the reader past it judges
    ({"mean": NEAR_ZERO_MEAN, "reshape": NEAR_ZERO_MEAN, "square": (2e-3, 1.0, False)}, ("mean", "reshape", "square"),
     [], ["mean", "reshape"]),
    # the reader's error is large but under 10× what the subtraction read (the mean's 0.02): it does not carry
    # the subtraction's own error, which is contained
    ({"mean": (0.02, 0.9999, False), "reshape": (0.02, 0.9999, False), "centre": (0.5, 0.9, False),
      "square": (0.1, 0.99, False)}, None, [], ["centre"]),
    # the tower's output has no reader: its own error is the harm (0.06 from exact inputs: a jump)
    ({"square": (0.06, 0.99, False)}, None, ["square"], []),
])
def test_the_jump_rule_judges_a_node_by_what_reaches_its_readers(errors, compared, jumps, contained):
    nodes = rule_case(errors, *([compared] if compared else []))
    assert [name for name, node in nodes.items() if node.jump] == jumps
    assert [name for name, node in nodes.items() if node.contained] == contained
    if jumps == ["mean"] and not nodes["mean"].overflow:
        assert nodes["mean"].why.startswith("read by centre")


def test_locate_holds_one_slice_at_a_time_and_agrees_with_the_whole_graph(tiny_model, prep_dir, tmp_path):
    """With a budget a few nodes fill, every slice's weights and one batch of its exposed outputs stay
    within it (or the slice is one node), and the per-node errors are the whole graph's."""
    job = planted_job(tiny_model, prep_dir, tmp_path, add_offset)
    inputs, budget = job.inputs[:4], 256 * 1024
    sliced = SlicedGraph(job.source, 2)
    sliced.cut({node.output for node in traced_nodes(sliced.model.graph, sliced.floats)}, budget)
    assert len(sliced.slices) > 20
    for part, _, (outputs,) in run_slice_major(sliced, [as_is], batches_of(inputs, 2)):
        held = sum(outputs[name].nbytes for name in part.exposed) + sum(sliced.nbytes(name) for name in part.weights)
        assert held <= budget or len(part.nodes) == 1, [node.name for node in part.nodes]

    whole, parts = locate(job.source, inputs, budget=2**40), locate(job.source, inputs, budget=budget)
    assert [node.name for node in whole] == [node.name for node in parts]
    for one, other in zip(whole, parts):
        assert (one.jump, one.contained, one.overflow) == (other.jump, other.contained, other.overflow), one.name
        assert abs(one.max_rel - other.max_rel) <= 1e-3 * one.max_rel + 1e-9, one.name
        assert abs(one.min_cosine - other.min_cosine) <= 1e-6, one.name
    assert any(node.jump for node in parts)


def test_a_slice_rounds_the_weights_the_whole_graph_rounds(tmp_path):
    """A weight read by a kept node and by a rounded one is rounded for both in the whole graph; with
    the two nodes in different slices, the kept node's slice must round it too."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((4, 4), 1 / 3, np.float32), "w")  # 1/3: not an fp16 number
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="kept"),
             helper.make_node("MatMul", ["y", "w"], ["z"], name="rounded")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])], [weight])
    path = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8), path)
    x = np.linspace(0.5, 2, 8, dtype=np.float32).reshape(2, 4)

    def whole(model):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    expected = whole(round_like_fp16(onnx.load(path), {"y", "z"}, keep=["kept"]))
    assert not np.allclose(expected, whole(onnx.load(path)), rtol=1e-5)  # the rounding shows at this tolerance
    sliced = SlicedGraph(path, 2)
    assert len(sliced.cut(set(), budget=1)) == 2
    (got,) = run_batch_major(sliced, fp16_simulation(sliced, ["kept"]), [x])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_weights_in_external_data_are_read_slice_by_slice(tiny_onnx, prep_dir, tmp_path):
    """A graph whose weights live in external data (ViT-H-14's vision tower) is loaded without them and
    each slice reads its own: the same per-node errors as the graph with its weights inside."""
    import onnx

    inline = str(onnx_path(tiny_onnx, "vision"))
    external = tmp_path / "external.onnx"
    onnx.save(onnx.load(inline), str(external), save_as_external_data=True, location="external.onnx.data")
    sliced = SlicedGraph(external, 2)
    assert all(init.data_location == onnx.TensorProto.EXTERNAL for init in sliced.weights.values()
               if sliced.nbytes(init.name) > 1024)  # loaded as stubs: the weights stay on disk
    inputs = prepare(tiny_onnx, prep_dir, "vision", tmp_path).inputs[:4]
    expected, got = locate(inline, inputs), locate(external, inputs, budget=256 * 1024)
    assert [node.name for node in got] == [node.name for node in expected]
    assert [node.max_rel for node in got] == pytest.approx([node.max_rel for node in expected], rel=1e-3, abs=1e-9)
