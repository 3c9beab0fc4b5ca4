"""End to end on the demo sample with the bundled tiny model: `make demo` and the numbered steps."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openclip_ascend.pipeline import RunConfig, run_steps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(module_dir):
    out = module_dir / "demo"
    options = dict(batch_sizes=(1, 4), workers=2, perf_loops=3, backend="onnxruntime", int8=True, fp16_estimate=True)
    run_steps(RunConfig(out, **options))
    # zero-shot on the colour sample into the same folder afterwards: one report, both tasks
    return out, run_steps(RunConfig(out, tasks=("zeroshot",), **options), (1, 4, 5, 7))


def test_demo_recall_floor_and_backend_agreement(demo, same_embeddings):
    out, results = demo
    by_backend = {(r["backend"], r["batch_size"]): r for r in results["accuracy"]["retrieval"]}
    assert set(by_backend) == {(b, n) for b in ("torch", "onnxruntime", "onnxruntime-int8", "fp16-estimate")
                               for n in (1, 4)}
    for (backend, batch), entry in by_backend.items():
        metrics = entry["metrics"]
        assert entry["check"] == "passed", (backend, batch)
        if backend in ("onnxruntime-int8", "fp16-estimate"):
            # their cost, bounded: recall@5 within 0.01 of fp32, plus the one query a rounding on another
            # CPU can flip (text: 100 queries, so one is 0.01 by itself)
            for key in ("image_retrieval_recall@5", "text_retrieval_recall@5"):
                queries = entry["captions"] if key.startswith("image") else entry["images"]  # text→image: captions
                slack = 0.01 + 1 / queries
                assert abs(metrics[key] - by_backend[("onnxruntime", batch)]["metrics"][key]) <= slack + 1e-9
            continue
        # far above chance (0.05) with margin below the 0.918 / 0.940 measured here
        assert metrics["image_retrieval_recall@5"] >= 0.88, (batch, metrics)
        assert metrics["text_retrieval_recall@5"] >= 0.88, (batch, metrics)
        if backend == "onnxruntime":  # the same embeddings file by file up to fp32 rounding, recall up to near-ties
            for tower in ("vision", "text"):
                assert entry["agreement"][tower]["max_abs_diff"] <= 1e-4
                assert entry["agreement"][tower]["min_cosine"] > 0.99999
            same_embeddings(out / "infer" / f"onnxruntime_bs{batch}", out / "infer" / f"torch_bs{batch}",
                            out / "prep" / "manifest.json", "fp32")
    assert results["accuracy"]["retrieval"][0]["images"] == 100 and results["accuracy"]["retrieval"][0]["captions"] == 500


def test_demo_writes_tables_and_results(demo):
    out, results = demo
    for name in ("recall.md", "recall.csv", "throughput_onnxruntime.md", "throughput_torch.csv", "results.json",
                 "accuracy.json", "performance.json", "export.json", "accuracy_vs_torch.md", "report.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["performance"]["throughput"]["onnxruntime"]["4"]["vision"] > 0
    latency = saved["performance"]["latency_ms"]["torch"]["4"]["text"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    e2e = saved["infer"]["retrieval"]["onnxruntime"]["4"]["vision"]
    assert 0 < e2e["e2e_fps"] < e2e["compute_fps"]  # reading and writing files costs time
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["commands"]["infer"][0].startswith("python openclip_infer.py --model ")
    table = (out / "throughput_onnxruntime.md").read_text()
    assert "| BatchSize | vision fps | text fps |" in table  # the best-in-bold rule: test_tables.py
    assert (out / "infer" / "onnxruntime_bs4" / "vision" / "1000_0.npy").is_file()
    assert (out / "infer" / "onnxruntime_bs4" / "text" / "1000_4_0.npy").is_file()
    summary = json.loads((out / "perf" / "torch" / "text_bs4_summary.json").read_text())
    assert summary["NPU_compute_time"]["count"] == 3 and summary["batchsize"] == 4


def test_shell_steps_take_the_npu_path_with_the_tools_present(demo, tmp_path, same_embeddings, stand_in_env):
    """With npu-smi, atc, ais_bench and aclruntime (stand-ins) present, BACKEND=auto compiles OMs and runs them,
    the text tower with a 16-token length bucket beside the full-length OM; recall through the OM path equals
    the ONNX Runtime path's."""
    out = tmp_path / "run"
    env = stand_in_env(OUT=str(out), BATCH_SIZES="1,4", REFERENCE="0", PERF_LOOPS="2", WORKERS="2",
                       TEXT_LENGTHS="dyn,16", PRECISION_SEARCH="1", PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "steps" / "run_all.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backend: ascend (npu-smi, atc, ais_bench and aclruntime found)" in result.stdout
    assert sorted(p.name for p in (out / "models").glob("*.om")) == [
        f"openclip_ascend_tiny_{t}_bs{b}.om" for t in ("text", "text_len16", "vision") for b in (1, 4)]
    assert "--text-lengths 16" in result.stdout and "_text_len16_bs4.om," in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["infer"]["retrieval"]["ascend"]["4"]["text"]["tokens_per_sample"] < 77
    # PRECISION_SEARCH=1: each tower searched on the demo set, step 3 compiled with what it found
    searched = results["export"]["precision_search"]
    assert set(searched) == {"vision", "text"} and all(entry["found"] for entry in searched.values())
    report = (out / "report.md").read_text()
    assert "## fp16 precision search" in report and "within 0.002 of fp32 (and every embedding to cosine ≥ 0.99)" in report
    for tower, entry in searched.items():
        expected = f"{tower}=keep:{entry['keep_file']}" if entry["nodes"] else f"{tower}=fp16"
        assert expected in result.stdout
    for batch in (1, 4):  # fp16 OMs (a few nodes kept fp32): each file's embedding within fp16's bounds of ONNX Runtime's
        same_embeddings(out / "infer" / f"ascend_bs{batch}", demo[0] / "infer" / f"onnxruntime_bs{batch}",
                        out / "prep" / "manifest.json", "fp16")
    assert (out / "throughput_ascend.md").is_file()


def test_accuracy_comparison_and_report(demo):
    out, results = demo
    agreement = {(r["backend"], r["batch_size"]): r.get("agreement") for r in results["accuracy"]["retrieval"]}
    assert agreement[("torch", 1)] is None
    fp32, int8 = agreement[("onnxruntime", 4)], agreement[("onnxruntime-int8", 4)]
    assert fp32["vision"]["max_abs_diff"] <= 1e-4 and fp32["text"]["min_cosine"] > 0.99999
    assert 0.99 < int8["vision"]["min_cosine"] < fp32["vision"]["min_cosine"]  # int8 costs something, visibly
    report = (out / "report.md").read_text()
    for needle in ("## Verdict", "## What was run", "| data | generated flickr-style sample (100 images, 500 captions) |",
                   "## Accuracy: retrieval on the generated flickr-style sample", "### Against PyTorch",
                   "| onnxruntime-int8 | 4 |", "![throughput against batch size](throughput.png)",
                   "![recall@5 and min cosine", "## Zero-shot classification on the colour sample (80 images, 8 classes)",
                   "### Machine and software", "### vision tower (samples / s)", "### Commands",
                   "$KIT/openclip_infer.py --model models/"):
        assert needle in report, needle
    assert report.index("## Verdict") < report.index("## What was run") < report.index("## Accuracy") \
        < report.index("## Appendix") < report.index("### Commands")
    assert str(out) + "/" not in report.split("### Commands")[1]  # paths relative to the run folder
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dynamic_batch_mixed_precision_on_two_devices(demo, tmp_path, same_embeddings, stand_in_env):
    """DYNAMIC_BATCH=1, DEVICES=0,1, PRECISION=mixed and TEXT_LENGTHS=dyn,16 through the shell steps on the
    stand-in tools."""
    out = tmp_path / "run"
    env = stand_in_env("310P3_two_cards.txt", OUT=str(out), BATCH_SIZES="1,4", REFERENCE="0", PERF_LOOPS="2",
                       WORKERS="2", TEXT_LENGTHS="dyn,16", TASK="retrieval,zeroshot", DYNAMIC_BATCH="1",
                       DEVICES="0,1", PRECISION="mixed", PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "steps" / "run_all.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (out / "models").glob("*.om")) == [  # a 16-token bucket beside the text OM
        "openclip_ascend_tiny_text_dynbs.om", "openclip_ascend_tiny_text_len16_dynbs.om",
        "openclip_ascend_tiny_vision_dynbs.om"]
    assert (out / "models" / "openclip_ascend_tiny_vision_dynbs.keep_dtype.cfg").is_file()
    assert len(list((out / "infer" / "ascend_bs4" / "vision" / "device1").glob("*_0.npy"))) == 50
    for batch in (1, 4):  # two devices' halves, gears, mixed precision: each file its own embedding, within fp16's bounds
        same_embeddings(out / "infer" / f"ascend_bs{batch}", demo[0] / "infer" / f"onnxruntime_bs{batch}",
                        out / "prep" / "manifest.json", "fp16")
    performance = json.loads((out / "performance.json").read_text())
    devices = performance["per_device"]["ascend"]["4"]["vision"]
    assert set(devices) == {"0", "1"}
    assert performance["throughput"]["ascend"]["4"]["vision"] == pytest.approx(sum(devices.values()))
    report = (out / "report.md").read_text()
    assert "### Per device" in report and "--dymBatch 4 --device 0,1" in report
    # zero-shot prompts through the same OMs (length buckets, gears, two devices)
    zeroshot = {e["batch_size"]: e for e in json.loads((out / "results.json").read_text())["accuracy"]["zeroshot"]}
    assert set(zeroshot) == {1, 4} and all(e["backend"] == "ascend" and e["metrics"]["acc1"] >= 0.6
                                           for e in zeroshot.values())
    assert "## Zero-shot classification" in report


def test_fp16_estimate_rounds_but_stays_close(demo):
    out, results = demo
    estimate = next(r for r in results["accuracy"]["retrieval"] if r["backend"] == "fp16-estimate" and r["batch_size"] == 4)
    vision = estimate["agreement"]["vision"]
    assert 1e-6 < vision["max_abs_diff"] < 1e-2 and vision["min_cosine"] > 0.999  # rounded, yet close
    assert "fp16-estimate" not in results["performance"]["throughput"]
    assert "`fp16-estimate` is an estimate, not a measurement" in (out / "report.md").read_text()


def test_accuracy_step_reads_each_embedding_folder_once(demo, monkeypatch):
    import openclip_ascend.evaluate.postprocess as postprocess
    from openclip_ascend.pipeline import step_accuracy

    out, results = demo
    reads = []
    original = postprocess.read_embedding_dir
    monkeypatch.setattr(postprocess, "read_embedding_dir", lambda folder: reads.append(str(folder)) or original(folder))
    config = RunConfig(out, batch_sizes=(1, 4), backend="onnxruntime", int8=True, fp16_estimate=True)
    again = step_accuracy(config)
    assert len(reads) == len(set(reads)) == 4 * 2 * 2  # backends × batch sizes × towers
    assert again["retrieval"] == results["accuracy"]["retrieval"]  # same entries, same order


def test_a_collapsed_backend_fails_the_check_everywhere(demo, tmp_path):
    """A finite but constant output (an fp16 collapse passes the NaN check) must not look good anywhere."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(demo[0], out)
    for path in [*(out / "infer" / "onnxruntime_bs4").rglob("*_0.npy"),
                 *(out / "zeroshot" / "infer" / "onnxruntime_bs4" / "vision").rglob("*_0.npy")]:
        np.save(path, np.full((1, 64), 0.125, dtype=np.float32))
    result = subprocess.run([sys.executable, str(ROOT / "openclip_pipeline.py"), "--output-dir", str(out), "--steps",
                             "5,7", "--batch-sizes", "1,4", "--backend", "onnxruntime", "--int8", "--fp16-estimate",
                             "--task", "retrieval,zeroshot"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "WARNING: accuracy check FAILED for onnxruntime bs4: degenerate embeddings" in result.stderr
    assert "accuracy check FAILED for onnxruntime bs4" in result.stderr.splitlines()[-1]
    saved = json.loads((out / "results.json").read_text())
    checks = {(e["backend"], e["batch_size"]): e["check"] for e in saved["accuracy"]["retrieval"]}
    assert checks[("onnxruntime", 4)] == "failed" and checks[("onnxruntime", 1)] == "passed"
    collapsed = next(e for e in saved["accuracy"]["retrieval"] if e["backend"] == "onnxruntime" and e["batch_size"] == 4)
    assert collapsed["metrics"]["image_retrieval_recall@5"] == 0.0  # was 1.0 when ties went to the positive
    assert "| onnxruntime | 4 |" in (out / "recall.md").read_text()
    assert "**FAILED**: degenerate embeddings" in (out / "recall.md").read_text()
    assert "**Accuracy check FAILED** for onnxruntime bs4" in (out / "report.md").read_text()
    # zero-shot: every image the same vector predicts one class for all; said, not hidden
    assert "onnxruntime bs4 (zeroshot)" in result.stderr.splitlines()[-1]
    zeroshot = next(e for e in saved["accuracy"]["zeroshot"] if e["backend"] == "onnxruntime" and e["batch_size"] == 4)
    assert zeroshot["check"] == "failed" and zeroshot["metrics"]["acc1"] <= 0.25
    assert "| onnxruntime | 4 |" in (out / "zeroshot.md").read_text() and "**FAILED**" in (out / "zeroshot.md").read_text()


def test_random_weights_are_recorded_and_shown(tmp_path, capsys):
    from openclip_ascend.model.loading import DEFAULT_PRETRAINED
    from openclip_ascend.report.writer import write_report

    assert RunConfig(tmp_path, model_name="ViT-B-32").pretrained == DEFAULT_PRETRAINED  # never random by omission
    config = RunConfig(tmp_path, pretrained="none", backend="onnxruntime")
    results = run_steps(config, [7])
    assert results["random_weights"] is True
    assert json.loads((tmp_path / "results.json").read_text())["random_weights"] is True
    assert "**Random weights** (`--pretrained none`)" in write_report(tmp_path)[0].read_text()


def test_noisy_throughput_is_measured_again_within_the_budget_and_marked_otherwise(tmp_path, monkeypatch):
    import openclip_ascend.pipeline as pipeline
    from openclip_ascend.report.writer import write_report
    from openclip_ascend.run.runner import spread

    calls = []

    def fake_runs(config):
        def run(**kwargs):
            calls.append(kwargs["output_dirname"])
            times = [10.0] * 19 + [40.0] if len(calls) == 1 else [10.0] * 20  # other load during the first
            return {"throughput": 1000 * 4 / np.mean(times), "latency_ms": {"p50": 10, "p90": 10, "p99": 10},
                    "spread": spread(times)}
        yield "onnxruntime", 4, "vision", ["--model", "m.onnx"], run

    monkeypatch.setattr(pipeline, "_runs", fake_runs)
    steady = pipeline.step_performance(RunConfig(tmp_path / "a", backend="onnxruntime", perf_budget=60))
    assert len(calls) == 2 and not steady["spread"]["onnxruntime"][4]["vision"]["noisy"]
    calls.clear()
    out = tmp_path / "b"
    noisy = pipeline.step_performance(RunConfig(out, backend="onnxruntime"))  # no budget: said, not hidden
    assert len(calls) == 1 and noisy["spread"]["onnxruntime"][4]["vision"]["noisy"]
    assert "(noisy)" in (out / "throughput_onnxruntime.md").read_text()
    (out / "results.json").write_text("{}")
    report = write_report(out)[0].read_text()
    assert report.count("**Noisy timings**: 1 of 1 figures") == 1 and "| 4 | 347.8 (noisy) |" in report
    assert "| onnxruntime | 4 | vision |" in report.split("## Appendix")[1]


def test_zeroshot_task_joins_the_same_report(demo):
    """TASK=zeroshot run into the retrieval run's folder: every backend and batch size scored with
    CLIP_benchmark's metrics, one result file each, the retrieval entries kept, one report."""
    import shlex

    out, results = demo
    zeroshot = {(e["backend"], e["batch_size"]): e for e in results["accuracy"]["zeroshot"]}
    assert set(zeroshot) == {(b, n) for b in ("onnxruntime", "onnxruntime-int8", "fp16-estimate", "torch")
                             for n in (1, 4)}
    assert len(results["accuracy"]["retrieval"]) == 8  # the earlier task's entries stayed
    assert set(results["preprocess"]) == set(results["infer"]) == {"retrieval", "zeroshot"}
    assert results["preprocess"]["zeroshot"] == {"dataset": "colour sample", "images": 80, "classes": 8, "prompts": 24}
    ort, torch_ = zeroshot[("onnxruntime", 4)], zeroshot[("torch", 4)]
    assert all(e["check"] == "passed" for e in zeroshot.values())
    assert ort["metrics"]["acc1"] >= 0.6 and ort["metrics"]["acc5"] >= ort["metrics"]["acc1"]  # chance: 0.125
    assert abs(ort["metrics"]["acc1"] - torch_["metrics"]["acc1"]) <= 2 / 80  # near-ties may flip, nothing more
    assert ort["agreement"]["vision"]["min_cosine"] > 0.99999 and "agreement" not in torch_
    saved = json.loads((out / "zeroshot" / "results_onnxruntime_bs4.json").read_text())
    assert saved["task"] == "zeroshot_classification" and saved["metrics"] == ort["metrics"]
    # the command step 5 recorded reproduces its result file
    command = next(line for line in results["commands"]["accuracy"] if "results_onnxruntime_bs4.json" in line)
    argv = shlex.split(command)
    argv[argv.index("--results-file") + 1] = str(out / "again.json")
    run = subprocess.run([sys.executable, str(ROOT / argv[1]), *argv[2:]], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((out / "again.json").read_text()) == saved
    report = (out / "report.md").read_text()
    assert "## Accuracy: retrieval on the generated flickr-style sample" in report
    assert "| onnxruntime-int8 | 4 | 0." in report
    assert "published" not in report.lower()  # none are published for the tiny model
    preprocess = results["commands"]["preprocess"]  # both tasks' commands, the earlier run's kept
    assert [line.split()[1] for line in preprocess] == ["openclip_preprocess.py", "openclip_zeroshot.py"]


SET_SIZES = {"mscoco": 5000, "flickr30k": 1000, "imagenet1k": 50000, "cifar10": 10000}  # images


def _write_run(folder, pretrained, retrieval="mscoco", zeroshot="imagenet1k", recall=(0.6311, 0.7702), generated=False,
               images=None):
    """A run folder's records; ``images``: the retrieval set's size where it is not the whole data set's."""
    from openclip_ascend.files import write_json

    write_json(folder / "results.json", {"model_name": "ViT-B-32", "pretrained": pretrained, "preprocess": {
        "retrieval": {"dataset": retrieval, "images": images or SET_SIZES[retrieval],
                      **({"generated": True} if generated else {})},
        "zeroshot": {"dataset": zeroshot, "images": SET_SIZES[zeroshot]}}})
    recall = {"image_retrieval_recall@5": recall[0], "text_retrieval_recall@5": recall[1]}
    write_json(folder / "accuracy.json", [{"backend": b, "batch_size": n, "metrics": recall, "check": "passed",
                                           "images": 1000, "captions": 5000} for b in ("ascend", "torch") for n in (1, 8)])
    write_json(folder / "zeroshot.json", [
        {"backend": b, "batch_size": 1, "metrics": {"acc1": 0.6612, "acc5": 0.8943, "mean_per_class_recall": 0.6611},
         "images": 50000, "classes": 1000, "templates": 80, "tied_images": 0, "check": "passed"}
        for b in ("ascend", "torch")])


def test_the_verdict_names_the_chip_of_an_npu_run_only_when_known(tmp_path):
    from openclip_ascend.files import read_json, write_json
    from openclip_ascend.report.writer import write_report

    _write_run(tmp_path, "laion2b_s34b_b79k")
    results = {**read_json(tmp_path / "results.json"), "backend": "ascend"}
    write_json(tmp_path / "results.json", results)
    report = write_report(tmp_path)[0].read_text()
    assert "| ascend | OM on the NPU |" in report and "| device | NPU |" in report
    write_json(tmp_path / "results.json", {**results, "convert": {"soc_version": "Ascend910B4"}})
    report = write_report(tmp_path)[0].read_text()
    assert "| ascend | OM on the NPU (Ascend910B4) |" in report and "| device | NPU Ascend910B4 |" in report


def test_step_7_names_the_files_it_wrote(tmp_path, capsys):
    """A run without step 6 has no throughput plot: the report's line names only what is there."""
    from openclip_ascend import pipeline

    _write_run(tmp_path, "laion2b_s34b_b79k")
    (tmp_path / "accuracy.png").write_bytes(b"")  # step 5's plot
    pipeline.step_report(RunConfig(tmp_path, backend="onnxruntime"))
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("report: "))
    assert line == f"report: {tmp_path / 'report.md'} (results.json, accuracy.png beside it)"


def test_published_figures_sit_beside_the_run_for_the_published_model(tmp_path):
    from openclip_ascend.files import read_json, write_json
    from openclip_ascend.report.writer import write_report

    _write_run(tmp_path, "laion2b_s34b_b79k")
    path, published = write_report(tmp_path)
    report = path.read_text()
    assert sorted((e["task"], e.get("dataset")) for e in published) == [
        ("retrieval", "mscoco"), ("throughput", None), ("zeroshot", "imagenet1k")]
    assert ("Against the published figure of CLIP_benchmark (MSCOCO 5k Karpathy test) (not measured here): ascend "
            "**FAIL** — image R@5 0.6311 (published 0.6542), text R@5 0.7702 (published 0.7982)") in report
    assert "| acc1 | 0.6650 | 0.6612 | 0.6612 |" in report and "| 64 | 326 | 4502 |" in report
    zeroshot = read_json(tmp_path / "zeroshot.json")  # a second batch size, a lower acc1: the range, not the first
    write_json(tmp_path / "zeroshot.json", zeroshot + [{**zeroshot[0], "batch_size": 8,
                                                        "metrics": {**zeroshot[0]["metrics"], "acc1": 0.65}}])
    assert "| acc1 | 0.6650 | 0.6500–0.6612 | 0.6612 |" in write_report(tmp_path)[0].read_text()
    assert "0.8841" not in report  # flickr30k's figures are not MSCOCO's
    # flickr30k: within 0.002 of ModelZoo's OM figure passes, 0.0021 off fails
    _write_run(tmp_path, "laion2b_s34b_b79k", retrieval="flickr30k", zeroshot="cifar10", recall=(0.8821, 0.9610))
    report = write_report(tmp_path)[0].read_text()
    assert ("Against the published figure of Ascend ModelZoo OpenCLIP, OM on 910B4 (CANN 7.0.RC1) (not measured here): "
            "ascend **PASS** — image R@5 0.8821 (published 0.8841), text R@5 0.9610 (published 0.9620)") in report
    assert "| acc1 | 0.6650" not in report
    _write_run(tmp_path, "laion2b_s34b_b79k", retrieval="flickr30k", recall=(0.8841, 0.9599))
    assert "ascend **FAIL** — image R@5 0.8841 (published 0.8841), text R@5 0.9599" in write_report(tmp_path)[0].read_text()
    # the generated sample in flickr30k's layout: the published model, but not the published images
    _write_run(tmp_path, "laion2b_s34b_b79k", retrieval="flickr30k", recall=(0.8821, 0.9610), generated=True)
    path, published = write_report(tmp_path)
    assert "retrieval" not in {e["task"] for e in published} and "0.8841" not in path.read_text()
    # 100 of flickr30k's 1000 test images: a subset's recall is not the published set's
    _write_run(tmp_path, "laion2b_s34b_b79k", retrieval="flickr30k", recall=(0.8821, 0.9610), images=100)
    path, published = write_report(tmp_path)
    assert "retrieval" not in {e["task"] for e in published} and "0.8841" not in path.read_text()
    for other in ("openai", "none"):  # another checkpoint, random weights: nothing published applies
        _write_run(tmp_path, other)
        path, published = write_report(tmp_path)
        assert published == [] and "published" not in path.read_text().lower()
