"""Opening an ONNX file in ONNX Runtime, for the export's own checks (model/) and the kit's sessions (run/)
alike: one line naming the file when it is missing or unreadable, and the numpy type each input takes."""

from pathlib import Path

import numpy as np

from .files import KitError

INPUT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
               "tensor(float16)": np.float16}


def load_session(path, options=None, providers=("CPUExecutionProvider",)):
    """An ``onnxruntime.InferenceSession`` on ``path``; a KitError naming the file where there is none to load."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: ONNX model not found; export it with openclip_torch2onnx.py")
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise KitError(f"{path}: ONNX Runtime cannot load this model ({str(exc).splitlines()[0]})") from exc
