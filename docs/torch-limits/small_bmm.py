"""How fast is torch.bmm on the CPU at the shapes vmap makes of a small MLP's matrix products?
usage: small_bmm.py
For each (tasks, m, k) @ (tasks, k, n): microseconds a call (best of 5, one thread) of
  bmm       torch.bmm(a, b)
  swapped   torch.bmm(b^T, a^T)^T  (the same product, with m and n exchanged)
  product   a * b                  (k = 1 only: an outer product, one multiply per element)
and the largest difference of each form from bmm's result."""
import timeit

import torch

torch.set_num_threads(1)


def micros(f):
    return min(timeit.repeat(f, number=2000, repeat=5)) / 2000 * 1e6


g = torch.Generator().manual_seed(0)
for (t, m, k), n in [((25, 40, 40), 10), ((25, 10, 40), 40), ((25, 40, 40), 1), ((25, 10, 1), 40)]:
    a, b = torch.randn(t, m, k, generator=g), torch.randn(t, k, n, generator=g)
    want = torch.bmm(a, b)
    forms = {
        "bmm": lambda: torch.bmm(a, b),
        "swapped": lambda: torch.bmm(b.transpose(1, 2), a.transpose(1, 2)).transpose(1, 2),
    }
    if k == 1:
        forms["product"] = lambda: a * b
    cells = [
        f"{name} {micros(f):5.1f} us (max|diff| {(f() - want).abs().max().item():.1e})"
        for name, f in forms.items()
    ]
    print(f"({t},{m},{k})@({t},{k},{n}):", ", ".join(cells))
