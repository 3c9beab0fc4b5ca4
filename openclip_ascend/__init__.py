"""openclip-ascend: take an OpenCLIP model from PyTorch to an Ascend NPU and prove it accurate and fast.

One module per concern: ``dataset`` (annotations, manifest), ``transforms`` (pixels and tokens),
``preprocess`` (step 1), ``models`` (loading), ``export`` (step 2), ``backends`` and ``runner``
(step 4, ais_bench layout), ``metrics`` and ``postprocess`` (step 5), ``reports``, ``sample``
(the bundled demo data) and ``pipeline`` (all steps in one command).
"""

__version__ = "0.1.0"
