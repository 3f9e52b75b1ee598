"""What does F.mse_loss's derivative cost under torch.func, against the same loss written out?
usage: mse_under_transforms.py
One second-order meta-gradient of a 1-40-40-1 MLP over 25 tasks (one inner step), the loss
F.mse_loss or (d * d).mean(): microseconds a call (best of 5, one thread), and where
F.mse_loss's derivative runs (torch's Python decomposition, found with the profiler)."""
import cProfile
import pstats
import timeit

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40), torch.nn.ReLU(),
    torch.nn.Linear(40, 1),
)
params = {k: v.detach() for k, v in net.named_parameters()}
xs, ys, xq, yq = (torch.randn(25, 10, 1, generator=g) for _ in range(4))


def squares(pred, target):
    d = pred - target
    return (d * d).mean()


def meta_grad(loss):
    def task(p, xs, ys, xq, yq):
        inner = grad(lambda p: loss(functional_call(net, p, (xs,)), ys))(p)
        adapted = {k: p[k] - 0.01 * inner[k] for k in p}
        return loss(functional_call(net, adapted, (xq,)), yq)

    return grad(lambda p: vmap(task, in_dims=(None, 0, 0, 0, 0))(p, xs, ys, xq, yq).mean())


for name, loss in (("F.mse_loss", F.mse_loss), ("(d * d).mean()", squares)):
    f = meta_grad(loss)
    us = min(timeit.repeat(lambda: f(params), number=200, repeat=5)) / 200 * 1e6
    print(f"{name:15s} {us:7.0f} us a meta-gradient")
profile = cProfile.Profile()
f = meta_grad(F.mse_loss)
profile.runcall(f, params)
for (file, line, func), (_, calls, *_) in pstats.Stats(profile).stats.items():
    if func == "mse_loss_backward":
        print(f"F.mse_loss's derivative: {func} in {file.split('site-packages/')[-1]}:{line}, "
              f"{calls} calls a meta-gradient")
