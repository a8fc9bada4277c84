"""Knowledge transfer between models that cannot share weights (Hinton, Vinyals & Dean 2015).

- `distill`: temperature distillation loss (T^2-scaled soft targets, optional hard labels), its
  closed-form logit gradient, a query-counting `Teacher`, `TransferTargets` for the shared loop.
- `student`: the `distill` learning rule (an MLP trained on hard labels and/or soft targets).
- `collectives`: byte-counting collectives over torch.distributed (gloo/NCCL) or a single-process
  simulation, with timeouts.
- `community`: N agents that share by gradient averaging, by exchanging predictions, or not at all.
"""
