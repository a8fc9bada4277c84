"""The backprop counterpart of the FF pipeline: a GPipe-style pipeline of the same MLP.

Rank k owns a block of layers. Each minibatch is cut into M micro-batches; all forward passes
flow up (each rank stores its inputs and outputs for the backward pass), then all backward
passes flow down, then every rank steps its optimizer (Huang et al. 2019). While the pipeline
fills and drains some ranks wait: the bubble is (K - 1) / (M + K - 1) of the time for K ranks.
Used by benchmarks/ff_pipeline.py to compare throughput with the FF pipeline, which has neither
the backward flow nor the bubble nor the stored activations.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mortalnet.parallel.ff_pipeline import partition, steady_rate


def gpipe_rank(rank: int, world: int, spec: dict[str, Any]) -> dict[str, Any]:
    """One rank of a GPipe backprop pipeline over an MLP 784-hidden...-10 on random data.

    spec: hidden, batch_size, micro_batches (must divide batch_size), steps, seed, lr, return_state.

    The hidden layers are split over the ranks exactly as the FF pipeline splits them
    (`partition(len(hidden), world)`), and the output layer goes with the last rank: both
    pipelines then give each rank the same hidden layers to run.
    """
    hidden = list(spec["hidden"])
    dims = [784, *hidden, 10]
    mine = partition(len(hidden), world)[rank] + ([len(hidden)] if rank == world - 1 else [])
    torch.manual_seed(int(spec["seed"]))
    linears = [nn.Linear(dims[i], dims[i + 1]) for i in range(len(dims) - 1)]  # same init everywhere
    block = nn.ModuleList(linears[i] for i in mine)
    last_layer = len(dims) - 2
    opt = torch.optim.SGD(block.parameters(), lr=float(spec.get("lr", 0.05)), momentum=0.9)
    B, M = int(spec["batch_size"]), int(spec["micro_batches"])
    if M < 1 or B % M:
        raise ValueError(f"micro_batches={M} must be >= 1 and divide batch_size={B}")
    mb = B // M
    gen = torch.Generator().manual_seed(int(spec["seed"]))
    x_all = torch.rand(20 * B, 784, generator=gen)
    y_all = torch.randint(0, 10, (20 * B,), generator=gen)

    def forward_block(h: torch.Tensor) -> torch.Tensor:
        for i, lin in zip(mine, block):
            h = lin(h)
            if i != last_layer:
                h = torch.relu(h)
        return h

    dist.barrier()
    t0 = time.perf_counter()
    t_first = t0
    for step in range(int(spec["steps"])):
        base = (step % 20) * B
        saved = []
        for m in range(M):  # all forwards
            rows = slice(base + m * mb, base + (m + 1) * mb)
            if rank == 0:
                inp = x_all[rows]
            else:
                inp = torch.empty(mb, dims[mine[0]])
                dist.recv(inp, src=rank - 1)
                inp.requires_grad_(True)
            out = forward_block(inp)
            if rank < world - 1:
                dist.send(out.detach().contiguous(), dst=rank + 1)
                saved.append((inp, out))
            else:
                saved.append((inp, F.cross_entropy(out, y_all[rows]) / M))
        for inp, out in reversed(saved):  # all backwards
            if rank == world - 1:
                out.backward()
            else:
                grad = torch.empty_like(out)
                dist.recv(grad, src=rank + 1)
                out.backward(grad)
            if rank > 0:
                dist.send(inp.grad.contiguous(), dst=rank - 1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 0:
            t_first = time.perf_counter()
    dist.barrier()
    t_end = time.perf_counter()
    steps = int(spec["steps"])
    result = {"rank": rank, "layers": mine, "steps": steps, "train_seconds": t_end - t0,
              "examples_per_s": steady_rate(steps, B, t0, t_first, t_end)}
    if spec.get("return_state"):  # tests: this rank's trained layers
        result["state"] = {f"{i}.{k}": v.tolist() for i, lin in zip(mine, block) for k, v in lin.state_dict().items()}
    return result
