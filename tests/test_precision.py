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

import pytest
import torch

from openclip_ascend.ascend.atc import plan_jobs
from openclip_ascend.evaluate.precision import export_for_precision, prepare, run_search
from openclip_ascend.files import KitError
from openclip_ascend.model.export import export_model
from openclip_ascend.model.loading import TINY_MODEL

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
    end_of_ln_pre = max(row["depth"] for row in rows if row["scope"] == "ln_pre")
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
