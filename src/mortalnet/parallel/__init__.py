"""Running FF on several processes with torch.distributed (layer pipeline, data parallel)."""
