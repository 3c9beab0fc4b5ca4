"""Stand-in for aclruntime, the C++ back end (pybind11 module) of ais_bench's Python front end. The real
front end imports it at the top of ``ais_bench/infer/interface.py`` (Ascend/tools,
ais-bench_workload/tool/ais_bench), so a Python without it cannot import InferSession; its ``dtype`` enum
names the tensor types and prints as ``dtype.float32``."""


class dtype:  # the back end's own (lower-case) name
    """aclruntime's dtype enum member: printed as ``dtype.float32``."""

    def __init__(self, name):
        self.name = name

    def __str__(self):
        return f"dtype.{self.name}"

    def __repr__(self):
        return f"<dtype.{self.name}>"
