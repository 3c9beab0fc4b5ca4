#!/usr/bin/env python3
"""The CPU fallback against PyTorch eager and against the machine's fp32 GEMM rate, in one run.

    python bench/bench_cpu_fallback.py [--model-name ViT-B-32] [--batch-sizes 1,8,16] [--repeats 7]
        [--results-file bench/results/cpu_fallback.json]

Per tower and batch size it times, interleaved round by round so machine noise hits all alike:
the roofline (the best fp32 GEMM rate of torch, numpy and ONNX Runtime on the tower's own matrix
shapes at batch ≥ 32, next to the CPU's theoretical peak), PyTorch eager (open_clip's forward, inference mode), ONNX Runtime on
the kit's export, ONNX Runtime on torch's stock export of open_clip's forward (what the kit's graph
rewrites are measured against) and the int8 fallback. It prints samples/s, ratios to eager, the
share of the roofline (samples/s × model FLOP per sample / GEMM FLOP/s of the same round) and the
int8 cosine to fp32. The model FLOP is open_clip's forward's; the kit's graph executes a little less
(its last block runs for the pooled token only), which the header line states. Random weights:
speed and agreement do not depend on them.
"""

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openclip_ascend.agreement import compare_embeddings  # noqa: E402
from openclip_ascend.ascend.profile import flops_per_sample  # noqa: E402
from openclip_ascend.cli import csv_ints  # noqa: E402
from openclip_ascend.files import write_json  # noqa: E402
from openclip_ascend.markdown import markdown_table  # noqa: E402
from openclip_ascend.model.export import export_tower, onnx_path, quantize_int8  # noqa: E402
from openclip_ascend.model.loading import load_model  # noqa: E402
from openclip_ascend.model.towers import example_inputs, tower_module  # noqa: E402
from openclip_ascend.report.writer import machine  # noqa: E402
from openclip_ascend.run.sessions import OnnxRuntimeSession  # noqa: E402

# The roofline's products have the rows of batch ≥ 32: smaller ones are bound by each call's overhead,
# not by what the engine can compute on these weight shapes (batch 1 then ran "above" its roofline)
ROOFLINE_BATCH = 32


def model_gemm_shapes(model, tower, batch):
    """(M, K, N) of the tower's own matrix products at this batch: the q/k/v and output projections
    and the MLP's two — what the roofline is measured on."""
    transformer = model.visual.transformer if tower == "vision" else model.transformer
    width = transformer.width
    hidden = transformer.resblocks[0].mlp.c_fc.out_features
    grid = model.visual.grid_size
    tokens = grid[0] * grid[1] + 1 if tower == "vision" else model.context_length
    rows = batch * tokens
    return ((rows, width, width), (rows, width, hidden), (rows, hidden, width))


class GemmEngines:
    """fp32 matrix products on every engine here: torch's BLAS, numpy's BLAS and ONNX Runtime's MLAS
    (a one-MatMul graph in a session with the kit's options). Which is fastest depends on the CPU
    (MKL takes a slow path on AMD), so the roofline is the best of them."""

    def __init__(self, work):
        self.work, self.sessions = Path(work), {}

    def _session(self, k, n):
        if (k, n) not in self.sessions:
            import onnx
            from onnx import TensorProto, helper, numpy_helper

            weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "B")
            graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
                                      [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
                                      [helper.make_tensor_value_info("C", TensorProto.FLOAT, [None, n])], [weight])
            path = self.work / f"gemm_{k}_{n}.onnx"
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8), str(path))
            self.sessions[(k, n)] = OnnxRuntimeSession(path)
        return self.sessions[(k, n)]

    def rates(self, shapes, repeats=3):
        """{engine: best FLOP/s over ``shapes``}."""
        best = {"torch": 0.0, "numpy": 0.0, "onnxruntime": 0.0}
        for m, k, n in shapes:
            a = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
            b = np.random.default_rng(2).standard_normal((k, n)).astype(np.float32)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            session = self._session(k, n)
            for engine, product in (("torch", functools.partial(torch.matmul, ta, tb)),
                                    ("numpy", functools.partial(np.matmul, a, b)),
                                    ("onnxruntime", functools.partial(session.run, a))):
                seconds = timed(lambda _, product=product: product(), None, min_seconds=0.05)
                best[engine] = max(best[engine], 2 * m * k * n / seconds)
        return best


def theoretical_peak():
    """(FLOP/s, how it was computed): cores × clock × fp32 FMA lanes × 2 FLOP × 2 FMA units (assumed:
    server x86 cores with AVX-512 or AVX2 issue two FMAs a cycle), from what the CPU reports. A VM
    reports its nominal clock; turbo clocks can exceed this peak."""
    import os

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    mhz = [float(line.split(":", 1)[1]) for line in text.splitlines() if line.lower().startswith("cpu mhz")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lanes = 16 if "avx512f" in flags else 8 if "fma" in flags else 4
    if not mhz:
        return None, "clock not reported"
    peak = cores * max(mhz) * 1e6 * lanes * 2 * 2
    return peak, f"{cores} CPUs × {max(mhz) / 1000:.2f} GHz × {lanes} fp32 lanes × 2 (FMA) × 2 FMA units"


def timed(run, inputs, min_seconds=0.25):
    """Seconds per run, over as many runs as fill ``min_seconds`` (batch 1 runs take ~20 ms, too short
    to time one by one on a noisy machine), after an untimed run that lets the previous runner's
    idle-spinning threads go quiet."""
    run(inputs)
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < min_seconds:
        run(inputs)
        runs += 1
    return (time.perf_counter() - start) / runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", default="ViT-B-32")
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--towers", default="vision,text")
    parser.add_argument("--results-file", default="bench/results/cpu_fallback.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model_name)
    work = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    prefix, stock = work / "kit", work / "stock"
    engines = GemmEngines(work)
    peak, peak_how = theoretical_peak()
    rows, records, executed = [], [], {}
    print(f"torch threads {torch.get_num_threads()}; roofline = the best fp32 GEMM rate of torch, numpy and ONNX "
          f"Runtime on the tower's own matrix shapes, measured every round; theoretical peak "
          f"{peak / 1e9 if peak else 0:.0f} GFLOP/s at the reported clock ({peak_how})")
    for tower in args.towers.split(","):
        export_tower(model, tower, onnx_path(prefix, tower))
        export_tower(model, tower, onnx_path(stock, tower), rewrite=False)
        eager = tower_module(model, tower)
        runners = {
            "eager": lambda x, m=eager: m(torch.from_numpy(x)),
            "onnxruntime": OnnxRuntimeSession(onnx_path(prefix, tower)).run,
            "onnxruntime (stock export)": OnnxRuntimeSession(onnx_path(stock, tower)).run,
            "onnxruntime-int8": OnnxRuntimeSession(quantize_int8(prefix, tower)).run,
        }
        flops = flops_per_sample(model, tower, eager)
        executed[tower] = flops_per_sample(model, tower, tower_module(model, tower, pooled_last_block=True)) / flops
        for batch in csv_ints(args.batch_sizes):
            inputs = example_inputs(model, tower, batch, seed=batch)
            shapes = model_gemm_shapes(model, tower, max(batch, ROOFLINE_BATCH))
            with torch.inference_mode():
                fp32 = runners["onnxruntime"](inputs)
                cosine = compare_embeddings(fp32, runners["onnxruntime-int8"](inputs))["min_cosine"]
                parity = compare_embeddings(eager(torch.from_numpy(inputs)).numpy(), fp32)["max_abs_diff"]
                times, gemm = {name: [] for name in runners}, []
                for _ in range(args.repeats):
                    gemm.append(engines.rates(shapes))
                    for name, run in runners.items():
                        times[name].append(timed(run, inputs))
            rooflines = [max(rates.values()) for rates in gemm]
            fps = {name: batch / float(np.median(t)) for name, t in times.items()}
            share = {name: float(np.median([batch / t * flops / r for t, r in zip(samples, rooflines)]))
                     for name, samples in times.items()}
            roofline = float(np.median(rooflines))
            per_engine = {engine: float(np.median([rates[engine] for rates in gemm])) / 1e9 for engine in gemm[0]}
            records.append({"tower": tower, "batch": batch, "fps": fps, "roofline_share": share,
                            "gflop_per_sample": flops / 1e9, "kit_graph_flop_fraction": executed[tower],
                            "roofline_gflops": roofline / 1e9, "gemm_gflops_by_engine": per_engine,
                            "gemm_shapes": shapes, "theoretical_peak_gflops": peak / 1e9 if peak else None,
                            "int8_min_cosine_to_fp32": cosine, "fp32_max_abs_diff_to_eager": parity})
            fastest = max(per_engine, key=per_engine.get)
            rows.append([tower, batch, f"{roofline / 1e9:.0f} ({fastest})",
                         " / ".join(f"{per_engine[e]:.0f}" for e in ("torch", "numpy", "onnxruntime")),
                         f"{fps['eager']:.1f}", f"{fps['onnxruntime']:.1f}",
                         f"{fps['onnxruntime'] / fps['eager']:.2f}",
                         f"{fps['onnxruntime'] / fps['onnxruntime (stock export)']:.2f}",
                         f"{share['eager']:.0%}", f"{share['onnxruntime']:.0%}", f"{fps['onnxruntime-int8']:.1f}",
                         f"{fps['onnxruntime-int8'] / fps['onnxruntime']:.2f}", f"{cosine:.5f}"])
            print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
            if max(share["eager"], share["onnxruntime"]) > 1:
                print(f"note: {tower} bs{batch} runs above the measured roofline: a GEMM engine faster than those "
                      "measured exists here; the shares are not limits", flush=True)
    table = markdown_table(HEADERS, rows)
    print(table)
    cpu = machine()["cpu"]
    write_json(args.results_file, {"model_name": args.model_name, "repeats": args.repeats, "cpu": cpu,
                                   "theoretical_peak": peak_how, "results": records})
    graph = ", ".join(f"{tower} {fraction:.1%}" for tower, fraction in executed.items())
    Path(args.results_file).with_suffix(".md").write_text(
        f"{args.model_name}, random weights, median of {args.repeats} interleaved rounds on {cpu}; roofline = the best "
        f"fp32 GEMM rate of torch / numpy / ONNX Runtime on the tower's own matrix shapes, measured in each round "
        f"(theoretical peak at the reported clock {peak / 1e9 if peak else 0:.0f} GFLOP/s: {peak_how}); roofline share counts open_clip's "
        f"model FLOP (the kit's graph executes {graph} of it)\n\n{table}\n", encoding="utf-8")


HEADERS = ["tower", "batch", "roofline GFLOP/s", "torch / numpy / ORT GEMM", "eager /s", "ORT /s", "ORT ÷ eager", "ORT ÷ stock export", "eager roofline",
           "ORT roofline", "int8 /s", "int8 ÷ ORT", "int8 min cos"]

if __name__ == "__main__":
    main()
