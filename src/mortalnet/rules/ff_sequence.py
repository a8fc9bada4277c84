"""Forward-Forward on sequences (Hinton 2022, sec. 3.5): predict the next character from the previous 10.

An input row is [C label "pixels" = the candidate next character | one-hot of the 10 context
characters] (C = 30 symbols), so the supervised FF rule (`FFLearner`, 30 classes) applies as is:
positive data = a real window with its real next character. Two kinds of negative data:

  * teacher forcing: the real context with the network's own prediction as the last character:
    sampled from the neutral-pass softmax with the true character excluded (`FFLearner`'s hard
    negatives), so a negative never equals its positive string;
  * self-generated (`FFSequenceLearner`): strings the network generates itself. Every
    `regenerate_every` steps it rewrites each training string after its first 10 real characters,
    sampling every next character from its own softmax, and the negatives are random windows of
    those generated strings (context and next character both generated): the negative phase
    needs no real data, as in a sleep phase.

Not a registered rule: it needs the training strings to generate from (see experiments/ff_sequence.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mortalnet.config import ConfigError
from mortalnet.data.text import one_hot_context, windows
from mortalnet.nets.ff import embed_label, neutral_label, normalize_rows, one_hot
from mortalnet.rules.base import sample_rows
from mortalnet.rules.forward_forward import FFConfig, FFLearner


def sequence_inputs(contexts: torch.Tensor, num_symbols: int) -> torch.Tensor:
    """(N, c) context symbols -> (N, num_symbols + c*num_symbols) FF input rows with an empty label slot."""
    ctx = one_hot_context(contexts, num_symbols)
    return torch.cat([ctx.new_zeros(len(ctx), num_symbols), ctx], 1)


def check_self_generated_rule(config: FFConfig) -> None:
    """Self-generated negatives train on FFLearner's float32 reference path (`local_gradients`),
    not its fused step: refuse the settings that only the fused step honours, rather than ignore them."""
    if config.precision != "float32" or config.compile_update:
        raise ConfigError("ff-self-generated trains in float32 without the fused step: rule.precision=bfloat16 "
                          "and rule.compile_update are not supported there (drop them, or leave ff-self-generated "
                          "out of models)")


class FFSequenceLearner(FFLearner):
    """FF next-character model with self-generated negative strings.

    Args:
        config: FF hyper-parameters (as for `FFLearner`).
        hidden: hidden widths (the paper: 3 x 2000).
        starts: (S, L) training strings; their first `context` symbols seed the generated strings.
        context: characters of context (10).
        num_symbols: alphabet size (30).
        regenerate_every: training steps between two regenerations of the negative strings.
        temperature: sampling temperature of the generation.
        seed, device: as for every rule.
    """

    def __init__(self, config: FFConfig, hidden: tuple[int, ...], starts: torch.Tensor, context: int = 10,
                 num_symbols: int = 30, regenerate_every: int = 100, temperature: float = 1.0, seed: int = 0,
                 device: torch.device | str = "cpu"):
        check_self_generated_rule(config)
        super().__init__(config, hidden, num_symbols * (context + 1), num_symbols, seed, device)
        if regenerate_every < 1:
            raise ConfigError(f"regenerate_every must be >= 1, got {regenerate_every}")
        self.context, self.regenerate_every, self.temperature = context, regenerate_every, temperature
        self.register_buffer("starts", starts[:, :context].to(self.device_).clone())
        self.register_buffer("generated", torch.zeros(starts.shape, dtype=torch.long, device=self.device_))
        self.register_buffer("steps_since", torch.tensor(regenerate_every))  # generate before the first step

    @torch.no_grad()
    def next_symbol_probs(self, contexts: torch.Tensor) -> torch.Tensor:
        """(N, c) contexts -> (N, C) the network's predicted distribution (neutral-pass softmax)."""
        logits = self.softmax_logits(sequence_inputs(contexts, self.num_classes))
        return torch.softmax(logits / self.temperature, 1)

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue each prompt (N, c) to `length` symbols by sampling from the network's own softmax."""
        g = generator if generator is not None else self.generator
        out = torch.zeros(len(prompts), length, dtype=torch.long, device=prompts.device)
        out[:, : self.context] = prompts[:, : self.context]
        for j in range(self.context, length):
            probs = self.next_symbol_probs(out[:, j - self.context : j])
            out[:, j] = sample_rows(probs, g)
        return out

    @torch.no_grad()
    def regenerate(self) -> None:
        """Rewrite the negative strings: real first `context` symbols, the rest the network's own."""
        self.generated.copy_(self.generate(self.starts, self.generated.shape[1]))
        self.steps_since.zero_()

    @torch.no_grad()
    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """One FF step: positive = real windows x (B, D) with their next symbols y; negative = random
        windows of the self-generated strings."""
        if int(self.steps_since) >= self.regenerate_every:
            self.regenerate()
        self.steps_since += 1
        B, s, C = len(y), self.cfg.label_strength, self.num_classes
        metrics: dict[str, torch.Tensor] = {}
        # the readout learns on the neutral pass of the real windows, as in ffnew.m
        x_neu = embed_label(x, neutral_label(B, s, C, x.device))
        normed = [normalize_rows(st) for st in self.net.forward_states(x_neu)]
        _, readout_grads, m = self._readout_step(normed, y)
        metrics.update(m)
        ctx_gen, next_gen = windows(self.generated, self.context)  # (S*(L-c), c), (S*(L-c),)
        pick = torch.randint(0, len(next_gen), (B,), generator=self.generator, device=self.generator.device)
        pick = pick.to(ctx_gen.device)
        x_neg = embed_label(sequence_inputs(ctx_gen[pick], C), one_hot(next_gen[pick], s, C))
        x_pos = embed_label(x, one_hot(y, s, C))
        grads_w, grads_b = self.local_gradients(x_pos, x_neg, metrics)
        for layer, gw, gb in zip(self.net.layers, grads_w, grads_b):
            layer.weight.grad, layer.bias.grad = gw, gb
        for w, g in zip(self.net.readout, readout_grads):
            w.grad = g
        for opt in self.optimizers:
            opt.step()
        metrics["negative_equals_positive"] = (x_neg == x_pos).all(1).float().mean()
        return metrics
