"""All five steps in one call: sample data (or a real data dir) → .npy → ONNX → embeddings per
backend and batch size → recall and throughput tables under one output folder."""

from pathlib import Path

from .backends import OnnxRuntimeSession, TorchSession
from .export import DEFAULT_OPSET, TOWERS, export_model, onnx_path
from .files import write_json
from .models import load_model
from .postprocess import evaluate_folders
from .preprocess import preprocess_dataset
from .reports import metrics_line, recall_table, save_table, throughput_table
from .runner import infer
from .sample import write_sample_dir

PIPELINE_BACKENDS = ("torch", "onnxruntime")


def _sessions(backend, model_name, pretrained, prefix):
    if backend == "torch":
        return {tower: TorchSession(model_name, pretrained, tower) for tower in TOWERS}
    return {tower: OnnxRuntimeSession(onnx_path(prefix, tower)) for tower in TOWERS}


def run_pipeline(output_dir, model_name, pretrained, data_dir=None, batch_sizes=(1, 4, 8), workers=None,
                 opset=DEFAULT_OPSET, backends=PIPELINE_BACKENDS):
    """Run every step; returns the results dict also written to ``output_dir/results.json``."""
    out = Path(output_dir)
    if data_dir is None:
        data_dir = write_sample_dir(out / "sample")
    prep = out / "prep"
    preprocess_dataset(data_dir, prep, model_name, pretrained, workers)
    prefix = out / "models" / model_name.lower().replace("-", "_")
    export_report = export_model(load_model(model_name, pretrained), prefix, opset=opset)

    accuracy, throughput = [], {}
    for backend in backends:
        sessions = _sessions(backend, model_name, pretrained, prefix)
        for batch in batch_sizes:
            run_dir = out / "infer" / f"{backend}_bs{batch}"
            for tower, session in sessions.items():
                summary = infer(session, input=str(prep / ("images" if tower == "vision" else "texts")),
                                output=str(run_dir), output_dirname=tower, outfmt="NPY", batchsize=batch)
                throughput.setdefault(backend, {}).setdefault(batch, {})[tower] = summary["throughput"]
            metrics, counts = evaluate_folders(run_dir / "vision", run_dir / "text", prep / "manifest.json")
            print(f"{backend} bs{batch}: {metrics_line(metrics)}")
            accuracy.append({"backend": backend, "batch_size": batch, "metrics": metrics, **counts})

    tables = [save_table(out / "recall", *recall_table(accuracy), title="Recall (CLIP_benchmark definition)")]
    for backend, by_batch in throughput.items():
        tables.append(save_table(out / f"throughput_{backend}", *throughput_table(by_batch),
                                 title=f"Throughput, {backend} (fps = 1000 × batch / mean compute ms)"))
    results = {"model_name": model_name, "pretrained": str(pretrained) if pretrained else None,
               "data_dir": str(data_dir), "export": export_report, "accuracy": accuracy, "throughput": throughput}
    write_json(out / "results.json", results)
    print("\n".join(tables))
    return results
