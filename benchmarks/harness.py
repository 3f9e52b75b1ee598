"""The harness: one fresh worker process per implementation, an agreement check, then timed
blocks taken round-robin across the workers, with the machine's background load per block.

Why processes: JAX and torch in one interpreter compete for threads and allocators, and a
user never runs them together; each worker imports only its own framework. Why round-robin:
the machine drifts (other users, thermal state), and taking one block from every worker in
turn (A, B, C, A, B, C, ...) spreads that drift over all rows alike. Only one worker runs at a
time; the others wait on their pipe.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import data
from .impls import REFERENCE, ImplSpec
from .workloads import B1, Workload

ROOT = Path(__file__).resolve().parents[1]
MIN_ROUNDS = 3  # a row is never summarised from fewer blocks than this, budget or not
Log = Callable[[str], None]


@dataclasses.dataclass
class Settings:
    """How a run measures (the same for every row).

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        threads: torch, OpenMP, MKL and XLA CPU threads in every worker.
        rounds: timed blocks per row (round-robin rounds).
        block_s: the target length of one timed block; a worker runs as many whole steps as
            fit (at least one), sized from its warm-up.
        budget_s: seconds of timing rounds per workload, after which no new round starts
            (once ``MIN_ROUNDS`` are done).
        backend: the ``torch.compile`` backend of the compiled torch rows; ``None`` is torch's
            default (inductor). The GPU script's CPU dry run uses ``"aot_eager"``.
        parallel_build: build all workers of a workload at once (first-call times then overlap
            and are marked so); the timing is round-robin either way.
        profile: count kernels (CUDA) or ATen operators (CPU) per step with ``torch.profiler``.
        warmup_s: seconds of untimed steps after the first two, before the blocks.
        deadline: a ``time.monotonic()`` after which no round starts and every wait on a
            worker ends (the GPU script's time limit); ``None``: no limit.
        call_timeout_s: the longest wait for one worker reply (a first call that compiles).
    """

    device: str = "cpu"
    threads: int = 1
    rounds: int = 15
    block_s: float = 0.25
    budget_s: float = 300.0
    backend: str | None = None
    parallel_build: bool = False
    profile: bool = False
    warmup_s: float = 0.5
    deadline: float | None = None
    call_timeout_s: float = 1800.0

    def time_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()


class WorkerError(RuntimeError):
    """A worker answered with an error, died, or did not answer in time."""


def worker_env(threads: int, device: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every worker starts with: the same thread settings for all frameworks."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    if threads == 1:  # XLA's CPU client: no Eigen thread pool for its operations
        xla = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla}".strip()
    if device.startswith("cuda"):
        # JAX would take 75% of the GPU's memory at start, leaving the torch workers short
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    else:
        env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


class WorkerProc:
    """One worker process (``benchmarks.worker``) and its pipe."""

    def __init__(
        self,
        name: str,
        spec: ImplSpec,
        w: Workload,
        data_path: Path,
        settings: Settings,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        kwargs = dict(spec.kwargs)
        if spec.compiled and spec.framework == "torch" and settings.backend is not None:
            kwargs["backend"] = settings.backend
        payload = {
            "framework": spec.framework,
            "factory": spec.factory,
            "imports": list(spec.needs),
            "kwargs": kwargs,
            "workload": dataclasses.asdict(w),
            "data": str(data_path),
            "device": settings.device,
            "threads": settings.threads,
        }
        self.name, self.settings = name, settings
        self.log_path = log_path
        self._log = open(log_path, "w")
        self._buffer = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", json.dumps(payload)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=worker_env(settings.threads, settings.device, env),
            cwd=ROOT,
            start_new_session=True,  # its own process group: inductor's compiler pool ends with it
        )

    def send(self, req: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError as e:
            raise WorkerError(f"{self.name}: worker exited ({self.stderr_tail()})") from e

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        limit = time.monotonic() + min(self.settings.call_timeout_s, self.settings.time_left())
        while b"\n" not in self._buffer:
            left = limit - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.kill()
                raise WorkerError(f"{self.name}: no reply in time (killed)")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.proc.wait()
                raise WorkerError(
                    f"{self.name}: worker exited with {self.proc.returncode} ({self.stderr_tail()})"
                )
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(reply["error"])
        return reply

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        self.send(req)
        return self.receive()

    def stderr_tail(self, lines: int = 5) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "no output"

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.proc.wait(timeout=30)
            except (WorkerError, subprocess.TimeoutExpired):
                pass
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


def meta_grad_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """Largest elementwise difference of two meta-gradients over the reference's largest entry."""
    if set(got) != set(want):
        return math.inf
    scale = max(float(np.abs(v).max()) for v in want.values())
    diff = max(float(np.abs(got[k] - want[k]).max()) for k in want)
    return diff / scale if math.isfinite(diff) else math.inf


def summarise(blocks: list[dict[str, Any]], tasks: int) -> dict[str, Any]:
    """Median and interquartile range of the blocks' time per step, and their background load."""
    ms = [b["ms_per_step"] for b in blocks]
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    out = {
        "median_ms": statistics.median(ms),
        "p25_ms": q[0],
        "p75_ms": q[2],
        "min_ms": min(ms),
        # the worker's own CPU time per step: less sensitive than wall time to waiting for a
        # core on a busy machine (it counts every thread the worker runs)
        "cpu_ms_median": statistics.median(1e3 * b["own_cpu_s"] / b["steps"] for b in blocks),
        "tasks_per_s": tasks / (statistics.median(ms) / 1e3),
        "blocks_timed": len(ms),
        "loadavg_1min_median": statistics.median(b["loadavg_1min"] for b in blocks),
        "on_cpu_median": statistics.median(b["on_cpu"] for b in blocks),
    }
    load = [b["background_cores"] for b in blocks if "background_cores" in b]
    if load:
        out["background_cores_median"] = statistics.median(load)
        out["background_cores_max"] = max(load)
    return out


@contextmanager
def _workers() -> Iterator[dict[str, WorkerProc]]:
    started: dict[str, WorkerProc] = {}
    try:
        yield started
    finally:
        for worker in started.values():
            worker.close()


def compare(
    w: Workload,
    impls: dict[str, ImplSpec],
    settings: Settings,
    *,
    log: Log = print,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every implementation in its own worker: build it and take one step from the shared
    weights; refuse a row whose meta-gradient differs from the reference's (the blog loop's,
    else the first row built) by more than the workload's tolerance; time the others in
    round-robin blocks. Returns the workload's entry: description, rows, the block schedule."""
    names = sorted(impls, key=lambda n: n != REFERENCE)  # the reference is built first
    entry: dict[str, Any] = {
        "workload": dataclasses.asdict(w),
        "description": w.describe(),
        "tolerance": w.tolerance,
    }
    rows = {
        n: {"impl": n, "framework": impls[n].framework, "compiled": impls[n].compiled, "ok": False}
        for n in names
    }
    entry["rows"] = [rows[n] for n in impls]  # reported in the order asked for
    if settings.time_left() <= 0:
        entry["skipped"] = "the run's time limit was reached before this workload"
        return entry
    with tempfile.TemporaryDirectory() as tmp, _workers() as workers:
        path = data.write(w, Path(tmp) / "data.npz")

        def start(name: str) -> WorkerProc:
            log_path = Path(tmp) / f"worker-{len(workers)}.log"
            workers[name] = WorkerProc(name, impls[name], w, path, settings, log_path, env)
            return workers[name]

        def build_request(name: str) -> dict[str, Any]:
            return {"cmd": "build", "grad_out": str(Path(tmp) / f"grad-{names.index(name)}.npz")}

        if settings.parallel_build:
            for name in names:
                start(name).send(build_request(name))
        grads: dict[str, dict[str, np.ndarray]] = {}
        for name in names:
            row = rows[name]
            try:
                if settings.parallel_build:
                    reply = workers[name].receive()
                else:
                    reply = start(name).request(build_request(name))
                with np.load(build_request(name)["grad_out"]) as f:
                    grads[name] = {k: f[k] / (1 - B1) for k in f.files}
            except (WorkerError, OSError) as e:
                row["error"] = str(e)[:1000]
                log(f"  {name}: failed ({row['error'][:300]})")
                continue
            row.update(reply)
            if settings.parallel_build:
                row["first_call_concurrent"] = True  # built beside the others: first call overlaps
        ref = REFERENCE if REFERENCE in grads else next(iter(grads), None)
        entry["reference"] = ref
        for name in grads:
            row = rows[name]
            row["meta_grad_error"] = meta_grad_error(grads[name], grads[ref])
            row["ok"] = row["meta_grad_error"] <= w.tolerance
            if row["ok"]:
                log(
                    f"  {name}: agrees ({row['meta_grad_error']:.1e}), first call "
                    f"{row['first_call_s']:.2f} s"
                )
            else:
                log(
                    f"  {name}: REFUSED, meta-gradient differs from the {ref}'s by "
                    f"{row['meta_grad_error']:.2e} (tolerance {w.tolerance:.0e}); not timed"
                )
        ready = [n for n in names if rows[n]["ok"]]
        for name in list(ready):
            try:
                warm = workers[name].request({"cmd": "warmup", "seconds": settings.warmup_s})
            except WorkerError as e:
                rows[name].update(ok=False, error=str(e)[:1000])
                ready.remove(name)
                continue
            rows[name]["steps_per_block"] = max(1, round(settings.block_s / warm["step_s"]))
        for name in [n for n in names if n not in ready]:
            workers.pop(name).close()  # refused and failed rows are never timed
        blocks, schedule = _round_robin(workers, rows, ready, settings, log)
        entry["schedule"] = schedule
        for name in ready:
            row = rows[name]
            try:
                row.update(workers[name].request({"cmd": "stats"}))
                if settings.profile and impls[name].framework == "torch":
                    row["profile"] = workers[name].request({"cmd": "profile", "steps": 3})
            except WorkerError as e:
                row["stats_error"] = str(e)[:1000]
            row["blocks"] = blocks[name]
            if blocks[name]:
                row.update(summarise(blocks[name], w.tasks))
    return entry


def _round_robin(
    workers: dict[str, WorkerProc],
    rows: dict[str, dict[str, Any]],
    ready: list[str],
    settings: Settings,
    log: Log,
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Timed blocks, one per ready worker in turn, round after round (A, B, C, A, B, C, ...)."""
    blocks: dict[str, list[dict[str, Any]]] = {n: [] for n in ready}
    schedule: list[str] = []
    started = time.perf_counter()
    for round_ in range(settings.rounds):
        if round_ >= MIN_ROUNDS and time.perf_counter() - started > settings.budget_s:
            log(f"  timing budget of {settings.budget_s:.0f} s used: {round_} rounds")
            break
        if settings.time_left() <= 0:
            log(f"  the run's time limit was reached: {round_} rounds")
            break
        for name in list(ready):
            try:
                block = workers[name].request(
                    {"cmd": "time", "steps": rows[name]["steps_per_block"]}
                )
            except WorkerError as e:
                rows[name].update(ok=False, error=f"while timing: {e}"[:1000])
                ready.remove(name)
                continue
            blocks[name].append({"round": round_, **block})
            schedule.append(name)
    return blocks, schedule


def first_calls(
    w: Workload, impls: dict[str, ImplSpec], settings: Settings, *, log: Log = print
) -> dict[str, dict[str, Any]]:
    """Each compiled row's first call in fresh processes: cold (an empty inductor cache of its
    own), then warm (a second process reusing what the first wrote); JAX's first call in a fresh
    process (its persistent compilation cache is off by default, so every first call compiles).
    Rows that neither compile nor are JAX are left out."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in impls.items():
        if not (spec.compiled or spec.framework == "jax"):
            continue
        with tempfile.TemporaryDirectory() as cache:
            runs = ("cold", "warm") if spec.compiled else ("cold",)
            got: dict[str, Any] = {}
            for kind in runs:
                got[kind] = _one_run(name, spec, w, settings, _cache_env(cache))
                got[f"{kind}_s"] = got[kind].get("first_call_s")
                log(f"  {name}, {kind}: {_seconds(got[f'{kind}_s'])}")
        if not spec.compiled:
            got["note"] = "JAX's persistent compilation cache is off by default"
        out[name] = got
    return out


def time_to_n(
    w: Workload,
    impls: dict[str, ImplSpec],
    settings: Settings,
    steps: list[int],
    *,
    log: Log = print,
) -> dict[str, dict[str, dict[str, Any]]]:
    """First call + N steps measured end to end, to check the table that computes them
    (``report.time_to_n``): for every row and every N in ``steps``, a fresh worker builds the
    step, takes its first call, then N steps in one block; the time is the first call plus the
    block (imports not counted, as for first calls). A compiled row runs cold (an empty
    inductor cache of its own) then warm (a second process reusing it); any other row runs once
    (it caches nothing, so cold is warm). Returns ``{row: {str(N): {"cold": run, "warm": run}}}``
    with each run's ``first_call_s``, ``steps_s`` and ``total_s`` (or its ``error``)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, spec in impls.items():
        out[name] = {}
        for n in steps:
            with tempfile.TemporaryDirectory() as cache:
                got = out[name][str(n)] = {}
                for kind in ("cold", "warm") if spec.compiled else ("cold",):
                    got[kind] = _one_run(name, spec, w, settings, _cache_env(cache), steps=n)
                    total = _seconds(got[kind].get("total_s"))
                    log(f"  {name}, first call + {n} steps, {kind}: {total}")
    return out


def _cache_env(cache: str) -> dict[str, str]:
    """Inductor's (and Triton's) on-disk caches in ``cache`` (empty: a cold start)."""
    return {"TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": str(Path(cache) / "triton")}


def _one_run(
    name: str,
    spec: ImplSpec,
    w: Workload,
    settings: Settings,
    env: dict[str, str],
    *,
    steps: int = 0,
) -> dict[str, Any]:
    """A fresh worker's build reply (its first call), and with ``steps`` the time of that many
    more steps (``steps_s``) and of the whole (``total_s``)."""
    with tempfile.TemporaryDirectory() as tmp, _workers() as workers:
        path = data.write(w, Path(tmp) / "data.npz")
        workers[name] = WorkerProc(name, spec, w, path, settings, Path(tmp) / "worker.log", env)
        try:
            reply = workers[name].request({"cmd": "build", "grad_out": str(Path(tmp) / "g.npz")})
            if steps:
                block = workers[name].request({"cmd": "time", "steps": steps})
                reply.update(steps=steps, steps_s=block["wall_s"])
                reply["total_s"] = reply["first_call_s"] + block["wall_s"]
            return reply
        except WorkerError as e:
            return {"error": str(e)[:1000]}


def _seconds(value: float | None) -> str:
    return "failed" if value is None else f"{value:.1f} s"


def environment(settings: Settings) -> dict[str, Any]:
    """What the numbers depend on: machine, versions (read without importing), settings."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": _cpu_name() if settings.device == "cpu" else None,  # a worker names a GPU
        "device_type": settings.device.partition(":")[0],
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads": settings.threads,
        "load_average": list(os.getloadavg()),
        "commit": _git_commit(),
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "deadline"},
        "worker_env": {
            k: v
            for k, v in worker_env(settings.threads, settings.device).items()
            if k.endswith("_NUM_THREADS") or k.startswith(("XLA_", "JAX_"))
        },
    }
    packages = ["torch", "jax", "jaxlib", "optax", "higher", "torchopt", "parallel-metalearn"]
    for package in [*packages, "optree"]:
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=ROOT
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None
