"""Inference sessions behind one small interface, so the ais_bench-layout runner serves them all.

A session exposes the model's single input (name, shape with ``None`` for a dynamic axis, numpy
dtype), the name of its output, and ``run(batch) -> embeddings``.
"""

from pathlib import Path

import numpy as np

from ..files import KitError
from ..onnx_runtime import INPUT_TYPES, load_session

BACKENDS = ("auto", "onnxruntime", "torch", "ascend")
# numpy 1.x computes float limits lazily and warns when it does so after ONNX Runtime has set the
# thread to flush denormals (see OnnxRuntimeSession): compute them first
for _dtype in (np.float16, np.float32, np.float64):
    np.finfo(_dtype)


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def execution_providers(device, available):
    """ONNX Runtime providers for ``device`` (cpu or cuda), best first, from those installed."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise KitError(f"--device {device!r} for an ONNX model: choose cpu or cuda")
    gpu = [provider for provider in GPU_PROVIDERS if provider in available]
    if "CUDAExecutionProvider" not in gpu:
        raise KitError(f"--device cuda: this ONNX Runtime has no CUDA provider (it has {', '.join(available)}); "
                       "`pip install onnxruntime-gpu` (instead of onnxruntime) on a machine with an NVIDIA GPU")
    return gpu + ["CPUExecutionProvider"]


def session_options(intra_op_threads=0):
    """The kit's ONNX Runtime options. Softmax over a causal mask's -inf rows underflows into
    denormals, which x86 handles ~5× slower (text tower +4 % end to end with flushing); no embedding
    depends on a value < 1e-38. ONNX Runtime also sets it on the calling thread, once per process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


class OnnxRuntimeSession:
    """ONNX Runtime: on the CPU, the fallback that runs anywhere; with onnxruntime-gpu, on CUDA/TensorRT."""

    def __init__(self, path, intra_op_threads=0, device="cpu"):
        import onnxruntime as ort

        providers = execution_providers(device, ort.get_available_providers())
        self.session = load_session(path, session_options(intra_op_threads), providers)
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise KitError(f"{path}: ONNX Runtime fell back to the CPU (CUDA libraries or GPU missing); check "
                           "`nvidia-smi` and the CUDA/cuDNN versions onnxruntime-gpu was built for")
        self.name = "onnxruntime" if device == "cpu" else "onnxruntime-cuda"
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise KitError(f"{path}: expected one input and one output, found {len(inputs)} inputs "
                           f"{[i.name for i in inputs]} and {len(outputs)} outputs {[o.name for o in outputs]}; "
                           "re-export with openclip_torch2onnx.py, which exports each tower alone")
        self.input_name = inputs[0].name
        self.input_shape = tuple(dim if isinstance(dim, int) else None for dim in inputs[0].shape)
        self.input_dtype = np.dtype(INPUT_TYPES[inputs[0].type])
        self.output_name = outputs[0].name
        if self.input_dtype.kind == "i" and len(self.input_shape) == 2 and self.input_shape[1] is None:
            context = self.session.get_modelmeta().custom_metadata_map.get("context_length", "")
            if not context.isdigit():
                raise KitError(f"{path}: the token input's length axis is dynamic but the graph does not record the "
                               "model's context length; export it with openclip_torch2onnx.py --text-lengths dyn")
            self.token_widths = range(1, int(context) + 1)  # the runner cuts each batch to what it needs

    def run(self, batch):
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def close(self):
        """Nothing to release: ONNX Runtime frees the session with the object."""


class TorchSession:
    """PyTorch eager on CPU: the reference the other backends are compared with."""

    name = "torch"

    def __init__(self, model_name, pretrained, tower):
        import torch

        from ..model.loading import default_pretrained, load_model
        from ..model.towers import TOWERS, input_geometry, tower_module

        if tower not in TOWERS:
            raise KitError(f"--tower must be vision or text for the torch backend, got {tower!r}")
        model = load_model(model_name, default_pretrained(model_name, pretrained))
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

    def close(self):
        """Nothing to release."""


AIS_BENCH_INSTALL = ("install Ascend's aclruntime and ais_bench wheels (Ascend tools repository, "
                     "ais-bench_workload/tool/ais_bench), built for this CANN version")
_ACL_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "int32": np.int32, "uint8": np.uint8,
               "int16": np.int16, "uint16": np.uint16, "uint32": np.uint32, "int64": np.int64,
               "uint64": np.uint64, "double": np.float64, "bool": np.bool_}  # aclruntime's dtype enum names


def distributions_providing(package):
    """Normalised names of the installed distributions that install the top-level ``package``
    (importlib.metadata.packages_distributions, which Python 3.9 lacks, read from top_level.txt / RECORD)."""
    from importlib import metadata

    owners = set()
    for dist in metadata.distributions():
        top_level = (dist.read_text("top_level.txt") or "").split()
        files = {str(f).split("/", 1)[0] for f in (dist.files or [])}
        if package in top_level or package in files:
            owners.add(dist.metadata["Name"].lower().replace("_", "-"))
    return owners


def ais_bench_infer_session():
    """``ais_bench.infer.interface.InferSession``, or a KitError that says what to install.

    PyPI's ``ais-bench-benchmark`` (an unrelated LLM-evaluation tool) also installs a package named
    ``ais_bench``; it is recognised and refused instead of crashing inside it.
    """
    try:
        from ais_bench.infer.interface import InferSession
    except ImportError as exc:
        if "ais-bench-benchmark" in distributions_providing("ais_bench"):
            raise KitError("the installed 'ais_bench' is PyPI's ais-bench-benchmark, an unrelated LLM-evaluation "
                           f"tool: `pip uninstall ais-bench-benchmark`, then {AIS_BENCH_INSTALL}") from exc
        missing = getattr(exc, "name", "") or "ais_bench"
        raise KitError(f"cannot import ais_bench's InferSession ({missing} missing): {AIS_BENCH_INSTALL}") from exc
    return InferSession


def _atc_flag(path, flag):
    """A flag's value in the ``.atc.json`` record convert/onnx2om.py keeps beside an OM (aclruntime does
    not report gears); None when the OM was compiled elsewhere or without that flag."""
    import json
    import re

    record = Path(re.sub(r"(_linux_[A-Za-z0-9_]+)?\.om$", "", str(path)) + ".atc.json")
    try:
        command = json.loads(record.read_text(encoding="utf-8"))["command"]
    except (OSError, ValueError, KeyError):
        return None
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{flag}=")]
    return values[0] if values else None


def om_gears(path):
    """The batch gears of a dynamic-batch OM the kit compiled (None: not known)."""
    gears = _atc_flag(path, "--dynamic_batch_size")
    return [int(g) for g in gears.split(",")] if gears else None


def om_batch(path, dym_batch=None):
    """The batch one execute of an OM takes: the ``--dymBatch`` gear, or the static batch atc compiled
    (None: not known)."""
    if dym_batch:
        return int(dym_batch)
    shape = _atc_flag(path, "--input_shape")
    batch = shape.rsplit(":", 1)[-1].split(",")[0] if shape else ""
    return int(batch) if batch.isdigit() else None


class AscendSession:
    """An OM on an Ascend NPU through ais_bench's InferSession (aclruntime), in this process."""

    name = "ascend"

    def __init__(self, path, device_id=0, dym_batch=None, acl_json_path=None):
        path = Path(path)
        if not path.is_file():
            raise KitError(f"{path}: OM model not found; compile it with convert/onnx2om.py")
        # acl_json_path: an acl.json that turns on the operator dump (ascend.dump.write_acl_json)
        self.session = ais_bench_infer_session()(int(device_id), str(path),
                                                 acl_json_path=str(acl_json_path) if acl_json_path else None)
        try:
            self._describe(path, dym_batch)
        except KitError:
            self.close()  # a refused OM releases its device too
            raise

    def _describe(self, path, dym_batch):
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise KitError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        desc = inputs[0]
        dtype_name = str(desc.datatype).rsplit(".", 1)[-1].lower()
        if dtype_name not in _ACL_DTYPES:
            raise KitError(f"{path}: input dtype {desc.datatype} is not one this kit feeds")
        self.input_name, self.output_name = desc.name, outputs[0].name
        self.input_dtype = np.dtype(_ACL_DTYPES[dtype_name])
        shape = [int(d) for d in desc.shape]
        # a dynamic-batch OM runs in ais_bench's "dymbatch" mode: the newer front end (ait) resets the gear
        # before every "static" run, the 2023 one takes the gear set here in either mode
        self.mode = "dymbatch" if shape[0] == -1 else "static"
        if shape[0] == -1 or dym_batch:
            shape[0] = self._set_gear(path, shape[0], dym_batch)
        self.input_shape = tuple(shape)

    def _set_gear(self, path, batch, dym_batch):
        """Check ``--dymBatch`` against the OM before aclruntime answers a bad one with a bare
        ``[ACL: general failure]`` (or, without one, fails on the batch of -1 it reports)."""
        gears = om_gears(path)
        known = f"its gears are {','.join(map(str, gears))}" if gears else \
            "its gears are the values atc's --dynamic_batch_size was given"
        if batch != -1:
            raise KitError(f"--dymBatch {dym_batch}: {path} is a static batch-{batch} OM; drop --dymBatch")
        if not dym_batch or (gears and int(dym_batch) not in gears):
            given = f"--dymBatch {dym_batch} is not one of them" if dym_batch else "it needs --dymBatch N"
            raise KitError(f"{path}: a dynamic-batch OM ({known}); {given}")
        try:
            self.session.set_dynamic_batchsize(int(dym_batch))
        except RuntimeError as exc:
            raise KitError(f"--dymBatch {dym_batch}: {path} refused it ({exc}); {known}") from exc
        return int(dym_batch)

    def run(self, batch):
        # the feed's byte size must equal the model input's exactly (the runner pads)
        feed = np.ascontiguousarray(batch, dtype=self.input_dtype)
        output = self.session.infer([feed], mode=self.mode)[0]
        return np.asarray(output).reshape(feed.shape[0], -1)

    def last_execute_ms(self):
        """The session's own time for the last execute, as ais_bench reads it for throughput."""
        summary = self.session.sumary() if hasattr(self.session, "sumary") else self.session.summary()
        last = summary.exec_time_list[-1]
        return float(last[1] - last[0]) if isinstance(last, (tuple, list)) else float(last)

    def close(self):
        """Release the device context, as ais_bench's command line does when it is done."""
        self.session.finalize()


class BucketedSession:
    """Text models of several static lengths (length buckets: e.g. a 32- and the 77-token OM) as one
    session: each batch, already cut to one of their lengths by the runner, runs on that model."""

    def __init__(self, sessions, paths):
        by_width = {}
        for session, path in zip(sessions, paths):
            shape = session.input_shape
            if session.input_dtype.kind != "i" or len(shape) != 2 or shape[1] is None:
                raise KitError(f"{path}: length buckets are text models with a fixed token length; this one takes "
                               f"{session.input_dtype} {shape}")
            if shape[1] in by_width:
                raise KitError(f"{path}: two models take {shape[1]} tokens; give one per length")
            by_width[shape[1]] = session
        batches = {session.input_shape[0] for session in sessions}
        if len(batches) > 1:
            raise KitError(f"{', '.join(map(str, paths))}: length buckets must share one batch size, found "
                           f"{sorted(batches, key=str)}")
        self.sessions = dict(sorted(by_width.items()))
        self.token_widths = tuple(self.sessions)
        longest = self.sessions[self.token_widths[-1]]
        self.name, self.input_name, self.output_name = longest.name, longest.input_name, longest.output_name
        self.input_dtype, self.input_shape = longest.input_dtype, longest.input_shape
        self._last = longest

    def run(self, batch):
        self._last = self.sessions[batch.shape[1]]
        return self._last.run(batch)

    @property
    def last_execute_ms(self):
        """The execute time of the model that ran last, where it keeps one (an OM)."""
        return getattr(self._last, "last_execute_ms", None)

    def close(self):
        for session in self.sessions.values():
            session.close()


def open_session(backend="auto", model=None, model_name=None, pretrained=None, tower=None, device=0,
                 dym_batch=None, acl_json_path=None):
    """Pick the session for ``backend``; ``auto`` decides from the model file's suffix. Several
    comma-separated text models of different token lengths run as length buckets."""
    if model and "," in str(model):
        paths = [part.strip() for part in str(model).split(",")]
        sessions = []
        try:
            for path in paths:
                sessions.append(_open_one(backend, path, model_name, pretrained, tower, device, dym_batch,
                                          acl_json_path))
            return BucketedSession(sessions, paths)
        except KitError:
            for session in sessions:
                session.close()
            raise
    return _open_one(backend, model, model_name, pretrained, tower, device, dym_batch, acl_json_path)


def _open_one(backend="auto", model=None, model_name=None, pretrained=None, tower=None, device=0,
              dym_batch=None, acl_json_path=None):
    if backend == "torch":
        if not model_name:
            raise KitError("--backend torch needs --model-name and --tower (--pretrained: a checkpoint file or cached "
                           "tag; none for random weights)")
        return TorchSession(model_name, pretrained, tower)
    if not model:
        raise KitError("--model is required: an .onnx file (ONNX Runtime) or an .om file (Ascend)")
    suffix = Path(model).suffix.lower()
    if backend == "ascend" or (backend == "auto" and suffix == ".om"):
        return AscendSession(model, device, dym_batch, acl_json_path)
    if acl_json_path:
        raise KitError("--dump / --acl_json_path: the operator dump is an NPU feature (acl.json); give an .om model")
    if dym_batch:
        raise KitError("--dymBatch applies to dynamic-batch OMs; for ONNX use --batchsize")
    onnx_device = "cuda" if str(device) == "cuda" else "cpu"
    if backend in ("auto", "onnxruntime"):
        if suffix != ".onnx":
            raise KitError(f"{model}: not an .onnx file; pass an ONNX model exported by openclip_torch2onnx.py")
        return OnnxRuntimeSession(model, device=onnx_device)
    raise KitError(f"--backend {backend!r}: choose from {', '.join(BACKENDS)}")
