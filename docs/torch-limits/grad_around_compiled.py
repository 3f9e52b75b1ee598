"""Is compiling the inner step on its own and differentiating through it from outside possible?
usage: grad_around_compiled.py {funcgrad,autograd,autograd_hop} BACKEND
  funcgrad : torch.func.grad (eager) around a call of torch.compile(inner_step)
  autograd : p.requires_grad; loss(compiled inner_step(p)).backward()  (the outer level by autograd)
The inner step itself is p - lr * torch.func.grad(loss)(p)."""
import sys
import torch
from torch.func import grad

how, backend = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
W = torch.randn(5, 5, dtype=torch.float64)
x, y = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)

def loss(p):
    return ((torch.tanh(x @ p) - y) ** 2).mean()

def inner(p):
    return p - 0.1 * grad(loss)(p)

def meta(p, step):
    return loss(step(step(p)))

cinner = torch.compile(inner, fullgraph=True, backend=backend)
ref = grad(lambda p: meta(p, inner))(W)
try:
    if how == "funcgrad":
        got = grad(lambda p: meta(p, cinner))(W)
    else:
        p = W.clone().requires_grad_()
        meta(p, cinner).backward()
        got = p.grad
    print(how, backend, ": OK, max|diff| to eager", (got - ref).abs().max().item())
except Exception as e:
    print(how, backend, ": FAILED", type(e).__name__, str(e).strip().splitlines()[0][:300])
