"""Smallest repros: a HOP (scan / nested_compile_region) inside torch.func.grad or vmap, compiled.
usage: hop_under_transform.py {scan,ncr} {grad,vmap,none}"""
import sys
import torch
from torch._higher_order_ops.scan import scan

hop, where = sys.argv[1], sys.argv[2]

def body(c, x):
    return c * x.sin(), c.clone()

@torch.compiler.nested_compile_region
def region(c, x):
    return (c * x.sin()).sum()

def f(c, xs):
    if hop == "scan":
        return scan(body, c, xs)[0].sum()
    return region(c, xs)

c, xs = torch.randn(3), torch.randn(4, 3)
if where == "grad":
    fn = lambda c, xs: torch.func.grad(f)(c, xs)
elif where == "vmap":
    fn = lambda c, xs: torch.func.vmap(f, in_dims=(0, None))(c[None].expand(2, 3).clone(), xs)
else:
    fn = f
try:
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(c, xs)
    print(hop, "under", where, ": OK", out)
except Exception as e:
    print(hop, "under", where, ": FAILED", type(e).__name__, str(e).splitlines()[0])
