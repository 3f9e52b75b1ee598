"""A benchmark worker: one implementation of one workload, alone in a fresh process.

The harness starts one per row (``python -m benchmarks.worker SPEC``) with the run's thread
settings in the environment, and drives it with one JSON request per line on stdin; each reply
is one JSON line on the original stdout (anything a library prints goes to stderr instead).
Only the row's own framework is imported: a torch worker never loads JAX, nor the reverse.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from .impls import Impl
from .workloads import Workload, load_arrays

# Where a first call's time goes, from torch.compile's own timers (``dynamo_timed``). They
# nest and overlap: the compile total holds Dynamo's tracing and the backend (AOTAutograd and
# inductor); inductor compiles C++ in worker processes while it generates the next kernels,
# and loading the compiled module waits for them.
COMPILE_PHASES = {
    "_compile.compile_inner": "compile, all",
    "bytecode_tracing": "Dynamo: tracing the Python",
    "aot_collect_metadata": "AOTAutograd: tracing the graph",
    "GraphLowering.run": "inductor: lowering",
    "Scheduler.__init__": "inductor: fusion",
    "Scheduler.codegen": "inductor: generating C++/Triton",
    "async_compile.wait": "inductor: waiting for the C++/Triton compiler",
    "PyCodeCache.load_by_key_path": "inductor: loading the compiled module (and the wait)",
}

WATCHED_MODULES = ("torch", "jax", "jaxlib", "metafunc", "optax", "higher", "torchopt", "metalearn")


def machine_busy_s() -> float | None:
    """CPU seconds all processors have spent busy since boot (``/proc/stat``; Linux only)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    busy = sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8))
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system  # every thread of this process, not its children


def status_field(name: str) -> int | None:
    """A number from ``/proc/self/status`` (e.g. ``VmHWM`` in KiB, ``Threads``), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def compile_phases() -> dict[str, float]:
    """Seconds in each of :data:`COMPILE_PHASES` so far in this process (empty when nothing
    was compiled; a phase that did not run, e.g. code generation on a cache hit, is left out)."""
    if "torch._dynamo" not in sys.modules:
        return {}
    from torch._dynamo.utils import compile_times

    names, values = compile_times(repr="csv", aggregate=True)
    seconds = dict(zip(names, values, strict=True))
    return {k: float(seconds[k]) for k in COMPILE_PHASES if k in seconds}


class Worker:
    """The worker's state: the spec it was started with and, once built, its ``Impl``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.workload = Workload(**spec["workload"])
        self.framework = spec["framework"]
        self.device = spec["device"]
        self.impl: Impl | None = None

    def setup_framework(self) -> str:
        """Import the row's framework with the run's thread settings; returns the device name."""
        threads = int(self.spec["threads"])
        if self.framework == "torch":
            import torch

            torch.set_num_threads(threads)
            torch.set_num_interop_threads(threads)
            if self.device.startswith("cuda"):
                # full float32 everywhere, as JAX is set below: no TF32 in matmuls or convs
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
                return torch.cuda.get_device_name(torch.device(self.device))
            return "cpu"
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
        if self.device.startswith("cuda"):
            return jax.devices("gpu")[0].device_kind if jax.default_backend() == "gpu" else "?"
        return "cpu"

    def build(self, req: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        device_name = self.setup_framework()
        module, _, name = self.spec["factory"].partition(":")
        factory = getattr(importlib.import_module(module), name)
        for library in self.spec.get("imports", ()):  # the row's own (optional) library
            importlib.import_module(library)
        if self.framework == "torch":
            from . import data  # torch and metafunc: the network and batch as tensors
        imported = time.perf_counter()  # the first call is what follows the imports
        arrays = load_arrays(Path(self.spec["data"]))
        kwargs = self.spec.get("kwargs", {})
        if self.framework == "torch":
            net, tasks = data.load(self.workload, arrays, self.torch_device())
            self.impl = factory(self.workload, net, tasks, self.torch_device(), **kwargs)
        else:
            self.impl = factory(self.workload, arrays, self.device, **kwargs)
        self.impl.step()  # the first call: compiles where the implementation compiles
        first = time.perf_counter() - imported
        np.savez(req["grad_out"], **self.impl.first_moment())
        reply = {
            "pid": os.getpid(),
            "import_s": imported - t0,
            "first_call_s": first,
            "device_name": device_name,
            "modules": self.modules(),
        }
        if phases := compile_phases():
            reply["compile_phases_s"] = phases
        return reply

    def warmup(self, req: dict[str, Any]) -> dict[str, Any]:
        """At least two more steps (CUDA graphs record on the second call), then more until
        ``seconds`` have passed; the median step time sizes the timed blocks."""
        assert self.impl is not None, "build first"
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 2 or time.perf_counter() - start < req["seconds"]:
            t0 = time.perf_counter()
            self.impl.step()
            times.append(time.perf_counter() - t0)
        return {"step_s": statistics.median(times[1:]), "steps": len(times)}

    def time(self, req: dict[str, Any]) -> dict[str, Any]:
        """One timed block of ``steps`` steps, with the machine's other load meanwhile."""
        assert self.impl is not None, "build first"
        step, n = self.impl.step, int(req["steps"])
        load = os.getloadavg()
        busy0, own0, started = machine_busy_s(), own_cpu_s(), time.monotonic()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        wall = time.perf_counter() - t0
        busy1, own1 = machine_busy_s(), own_cpu_s()
        block = {
            "t_start": started,
            "steps": n,
            "ms_per_step": 1e3 * wall / n,
            "wall_s": wall,
            "own_cpu_s": own1 - own0,
            "loadavg_1min": load[0],
        }
        # the share of the block this process was running: well below 1 on one thread means
        # it waited for a processor (the counters tick every 10 ms: short blocks are coarse)
        block["on_cpu"] = (own1 - own0) / wall
        if busy0 is not None and busy1 is not None:
            # CPU time other processes (other users, the harness, compiler pools) used
            # during the block, in cores: 1.0 is one processor kept busy throughout
            other = (busy1 - busy0) - (own1 - own0)
            block["background_cores"] = min(max(0.0, other / wall), float(os.cpu_count() or 1))
        return block

    def stats(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.impl is not None, "build first"
        peak = self.impl.peak_memory_mb()
        hwm = status_field("VmHWM")
        return {
            "peak_memory_mb": peak if peak is not None else (hwm / 1024 if hwm else None),
            "peak_memory_kind": "device" if peak is not None else "process RSS (VmHWM)",
            "os_threads": status_field("Threads"),
            "modules": self.modules(),
        }

    def profile(self, req: dict[str, Any]) -> dict[str, Any]:
        """Per step, from ``torch.profiler``: GPU kernels run, host launch calls and CUDA
        graph launches on CUDA; on a CPU (the dry run) the ATen operators called."""
        assert self.impl is not None, "build first"
        if self.framework != "torch":
            return {"error": "torch.profiler sees torch rows only"}
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device.startswith("cuda")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        n = int(req["steps"])
        with profile(activities=activities) as prof:
            for _ in range(n):
                self.impl.step()
        events = prof.events()
        out: dict[str, Any] = {
            "steps": n,
            "aten_ops_per_step": sum(e.name.startswith("aten::") for e in events) / n,
        }
        if cuda:
            launches = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx")
            out.update(
                kernels_per_step=sum(e.device_type == DeviceType.CUDA for e in events) / n,
                launch_calls_per_step=sum(e.name.startswith(launches) for e in events) / n,
                cuda_graph_launches_per_step=sum(e.name == "cudaGraphLaunch" for e in events) / n,
            )
        return out

    def torch_device(self) -> Any:
        import torch

        return torch.device(self.device)

    def modules(self) -> list[str]:
        return [m for m in WATCHED_MODULES if m in sys.modules]


def main() -> int:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a library's print must not corrupt the replies
    worker = Worker(json.loads(sys.argv[1]))
    handlers = {
        "build": worker.build,
        "warmup": worker.warmup,
        "time": worker.time,
        "stats": worker.stats,
        "profile": worker.profile,
    }
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            # tearing down an interpreter that holds torch takes seconds, and nothing here
            # needs it: the replies are flushed line by line
            os._exit(0)
        try:
            reply = handlers[req["cmd"]](req)
        except Exception as e:
            traceback.print_exc()
            reply = {"error": f"{type(e).__name__}: {e}"[:1000]}
        replies.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
