"""Stand-in for ``ais_bench.infer.interface.InferSession``, ais_bench's Python front end over aclruntime (the
back-end stand-in in ``tests/fakes/aclruntime``). Two generations, chosen with ``$FAKE_AIS_BENCH_GENERATION``
as the back end is, each doing what its source does:

- ``tools-2023`` (default; Ascend/tools ``ais-bench_workload/tool/ais_bench/ais_bench/infer/interface.py``, the
  last version there): ``infer(feeds, mode='static', custom_sizes)`` runs with whatever gear was set (only
  ``dymshape``/``dymdims`` prepare anything); ``sumary()``, ``reset_sumaryinfo()``; ``finalize()`` releases
  the session's device.
- ``ait`` (the ait/msit benchmark component, ``ait/components/benchmark/ais_bench/infer/interface.py`` as
  mirrored in mjlovesz/sync-ait): ``infer(feeds, mode='static', custom_sizes, out_array=True)`` prepares by
  mode — ``static`` calls ``set_staticbatch()`` before every run (a gear set earlier is dropped),
  ``dymbatch`` sets the gear from the feed's -1 axis, an unknown mode is an error; ``summary()`` and
  ``reset_summaryinfo()``; ``finalize`` is a static method.

Feeds go to the back end as ``BaseTensor(address, nbytes)``, outputs come back as tensors made host arrays.
"""

import aclruntime  # the real front end imports its back end first: without it, no InferSession
import numpy as np


class _Common:
    def __init__(self, device_id, model_path, acl_json_path=None, debug=False, loop=1):
        self.device_id, self.model_path, self.loop = device_id, model_path, loop
        options = aclruntime.session_options()
        if acl_json_path is not None:
            options.acl_json_path = acl_json_path
        options.log_level = 1 if debug else 2
        options.loop = loop
        self.session = aclruntime.InferenceSession(model_path, device_id, options)
        self.outputs_names = [meta.name for meta in self.session.get_outputs()]

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def set_staticbatch(self):
        self.session.set_staticbatch()

    def set_dynamic_batchsize(self, batch):
        self.session.set_dynamic_batchsize(batch)

    def run(self, feeds, out_array=False):
        inputs = [aclruntime.BaseTensor(array.__array_interface__["data"][0], array.nbytes) for array in feeds]
        outputs = self.session.run(self.outputs_names, inputs)
        if not out_array:
            return outputs
        for tensor in outputs:
            tensor.to_host()
        return [np.array(tensor) for tensor in outputs]

    @staticmethod
    def _arrays(feeds):
        arrays = []
        for feed in feeds:
            if not isinstance(feed, np.ndarray):
                raise RuntimeError(f"type:{type(feed)} invalid")
            arrays.append(np.ascontiguousarray(feed))
        return arrays

    def free_resource(self):
        self.session.free_resource()


class Tools2023Session(_Common):
    def infer(self, feeds, mode="static", custom_sizes=100000):
        return self.run(self._arrays(feeds), out_array=True)

    def sumary(self):  # sic
        return self.session.sumary()

    def reset_sumaryinfo(self):
        self.session.reset_sumaryinfo()

    def finalize(self):
        if hasattr(self.session, "finalize"):
            self.session.finalize()


class AitSession(_Common):
    def infer(self, feeds, mode="static", custom_sizes=100000, out_array=True):
        arrays = self._arrays(feeds)
        if mode == "static":
            self.set_staticbatch()
        elif mode == "dymbatch":
            self._dymbatch_prepare([array.shape for array in arrays])
        else:
            raise RuntimeError(f"wrong infer_mode:{mode}, only support \"static\",\"dymbatch\",\"dymhw\", "
                               "\"dymdims\",\"dymshape\"")
        return self.run(arrays, out_array)

    def _dymbatch_prepare(self, shapes):
        described = self.get_inputs()
        if len(shapes) != len(described):
            raise RuntimeError("input datas and intensors nums not matched!")
        for desc, shape in zip(described, shapes):
            for axis, dim in enumerate(shape):
                if desc.shape[axis] < 0:
                    self.set_dynamic_batchsize(dim)
                    return
                if desc.shape[axis] != dim:
                    raise RuntimeError("input datas and intensors dim not matched!")
        raise RuntimeError("not a dymbatch model!")

    def summary(self):
        return self.session.sumary()

    def reset_summaryinfo(self):
        self.session.reset_sumaryinfo()

    @staticmethod
    def finalize():
        if hasattr(aclruntime.InferenceSession, "finalize"):
            aclruntime.InferenceSession.finalize()


InferSession = AitSession if aclruntime.generation() == "ait" else Tools2023Session
