"""The JAX implementation of the outer step: ``jax.jit`` of ``grad`` of a ``vmap``-ed MAML
loss and optax Adam, from the shared numpy weights and batch (no torch in this process)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .impls import Impl
from .workloads import OUTER_LR, Workload, params_of


def jax_jit(w: Workload, arrays: dict[str, np.ndarray], device: str) -> Impl:
    """The JAX equivalent: ``jax.jit`` of ``grad`` of a ``vmap``-ed MAML loss, optax Adam."""
    target = _device(device)
    params = {k: jax.device_put(v, target) for k, v in params_of(arrays).items()}
    forward = _mlp if w.kind == "sinusoid" else functools.partial(_conv, blocks=w.blocks)

    def loss(p, data):
        x, y = data
        pred = forward(p, x)
        if w.kind == "sinusoid":
            return jnp.mean((pred - y) ** 2)
        logp = jax.nn.log_softmax(pred)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def task_loss(p, support, query):
        for _ in range(w.inner_steps):
            g = jax.grad(loss)(p, support)
            if w.first_order:
                g = jax.lax.stop_gradient(g)
            p = jax.tree_util.tree_map(lambda a, b: a - w.inner_lr * b, p, g)
        return loss(p, query)

    def meta_loss(p, support, query):
        return jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0))(p, support, query))

    tx = optax.adam(OUTER_LR)

    @jax.jit
    def jstep(p, opt_state, support, query):
        g = jax.grad(meta_loss)(p, support, query)
        updates, opt_state = tx.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    support = tuple(jax.device_put(arrays[f"support/{i}"], target) for i in (0, 1))
    query = tuple(jax.device_put(arrays[f"query/{i}"], target) for i in (0, 1))
    # the state on the device as the weights are: an uncommitted Adam count would make the
    # second call compile the step again (the first returns it committed)
    held = [params, jax.device_put(tx.init(params), target)]

    def step() -> None:
        held[:] = jstep(held[0], held[1], support, query)
        jax.block_until_ready(held)

    def first_moment() -> dict[str, np.ndarray]:
        mu = held[1][0].mu
        return {k: np.asarray(jax.device_get(v), dtype=np.float64) for k, v in mu.items()}

    return Impl(step, first_moment, _peak(target))


def _device(device: str) -> Any:
    if device.startswith("cuda"):
        if jax.default_backend() != "gpu":
            raise RuntimeError(
                f"JAX has no GPU backend here (default backend {jax.default_backend()!r}): "
                "jax[cuda] is needed"
            )
        index = int(device.partition(":")[2] or 0)
        return jax.devices("gpu")[index]
    return jax.devices("cpu")[0]


def _peak(target: Any) -> Callable[[], float | None]:
    def peak() -> float | None:
        if target.platform == "cpu":
            return None  # the process's peak resident memory
        stats = target.memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**20 or None

    return peak


def _mlp(p, x):
    for i in (0, 2):
        x = jnp.maximum(x @ p[f"{i}.weight"].T + p[f"{i}.bias"], 0)
    return x @ p["4.weight"].T + p["4.bias"]


def _conv(p, x, *, blocks):
    for b in range(blocks):
        c, n = f"{4 * b}", f"{4 * b + 1}"
        x = jax.lax.conv_general_dilated(
            x,
            p[f"{c}.weight"],
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )
        x = x + p[f"{c}.bias"][:, None, None]
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = x.var(axis=(0, 2, 3), keepdims=True)
        x = (x - mean) / jnp.sqrt(var + 1e-5) * p[f"{n}.weight"][:, None, None]
        x = jnp.maximum(x + p[f"{n}.bias"][:, None, None], 0)
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    head = 4 * blocks + 1  # conv_net's layers: 4 per block, then Flatten and Linear
    return x.reshape(x.shape[0], -1) @ p[f"{head}.weight"].T + p[f"{head}.bias"]
