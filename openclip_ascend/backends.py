"""Inference sessions behind one small interface, so the ais_bench-layout runner serves them all.

A session exposes the model's single input (name, shape with ``None`` for a dynamic axis, numpy
dtype), the name of its output, and ``run(batch) -> embeddings``.
"""

from pathlib import Path

import numpy as np

from .files import KitError

BACKENDS = ("auto", "onnxruntime", "torch", "ascend")


class OnnxRuntimeSession:
    """ONNX Runtime on CPU: the fallback that runs anywhere."""

    name = "onnxruntime"

    def __init__(self, path, intra_op_threads=0):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise KitError(f"{path}: ONNX model not found; export it with openclip_torch2onnx.py")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise KitError(f"{path}: ONNX Runtime cannot load this model ({str(exc).splitlines()[0]})") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise KitError(f"{path}: expected one input and one output, found {len(inputs)} inputs "
                           f"{[i.name for i in inputs]} and {len(outputs)} outputs {[o.name for o in outputs]}; "
                           "re-export with openclip_torch2onnx.py, which exports each tower alone")
        self.input_name = inputs[0].name
        self.input_shape = tuple(dim if isinstance(dim, int) else None for dim in inputs[0].shape)
        self.input_dtype = np.dtype({"tensor(float)": np.float32, "tensor(int64)": np.int64,
                                     "tensor(int32)": np.int32, "tensor(float16)": np.float16}[inputs[0].type])
        self.output_name = outputs[0].name

    def run(self, batch):
        return self.session.run([self.output_name], {self.input_name: batch})[0]


class TorchSession:
    """PyTorch eager on CPU: the reference the other backends are compared with."""

    name = "torch"

    def __init__(self, model_name, pretrained, tower):
        import torch

        from .export import TOWERS, input_geometry, tower_module
        from .models import load_model

        if tower not in TOWERS:
            raise KitError(f"--tower must be vision or text for the torch backend, got {tower!r}")
        model = load_model(model_name, pretrained)
        (height, width), context_length = input_geometry(model)
        spec = TOWERS[tower]
        self._torch = torch
        self.module = tower_module(model, tower)
        self.input_name, self.output_name = spec.input_name, spec.output_name
        if tower == "vision":
            self.input_shape, self.input_dtype = (None, 3, height, width), np.dtype(np.float32)
        else:
            self.input_shape, self.input_dtype = (None, context_length), np.dtype(np.int64)

    def run(self, batch):
        with self._torch.inference_mode():
            return self.module(self._torch.from_numpy(batch)).numpy()


def open_session(backend="auto", model=None, model_name=None, pretrained=None, tower=None):
    """Pick the session for ``backend``; ``auto`` decides from the model file's suffix."""
    if backend == "torch":
        if not model_name:
            raise KitError("--backend torch needs --model-name (and --pretrained for trained weights) and --tower")
        return TorchSession(model_name, pretrained, tower)
    if not model:
        raise KitError("--model is required: an .onnx file (ONNX Runtime) or an .om file (Ascend)")
    suffix = Path(model).suffix.lower()
    if backend == "ascend" or (backend == "auto" and suffix == ".om"):
        raise KitError(f"{model}: running .om models needs the Ascend backend (aclruntime/ais_bench), which this "
                       "version of the kit does not include yet; run the .onnx model, or use ais_bench directly")
    if backend in ("auto", "onnxruntime"):
        if suffix != ".onnx":
            raise KitError(f"{model}: not an .onnx file; pass an ONNX model exported by openclip_torch2onnx.py")
        return OnnxRuntimeSession(model)
    raise KitError(f"--backend {backend!r}: choose from {', '.join(BACKENDS)}")
