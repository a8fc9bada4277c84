"""The recurrent FF network of Hinton 2022, sec. 4 (figure 3): a static image treated as a video.

Layers 0..L+1: the image x (bottom, clamped), hidden layers 1..L, and the label (top, clamped, a
one-hot vector). Time step 0 is a single bottom-up pass. At every later step t each hidden layer
computes its new activity from the *normalized* activities of the layers below and above at step
t-1 (synchronous update), and is damped:

    z_l(t) = norm(h_{l-1}(t-1)) W_up_l + norm(h_{l+1}(t-1)) W_down_l + b_l
    h_l(t) = damping * h_l(t-1) + (1 - damping) * f(z_l(t))          (paper: 0.3 old + 0.7 new)

with h_0 = x and h_{L+1} = the label for all t. The image part norm(x) W_up_1 is the same at
every step and is computed once.

The products can run in bfloat16: `product_weights(torch.bfloat16)` gives bf16 copies of the
weights (made once per training step and reused by all its iterations), and every method that
multiplies takes them as `weights`; the normalized activities are cast to the weights' dtype, each
product accumulates in fp32 inside the matmul, and its result (a total input) is float32.
"""

from __future__ import annotations

import torch
from torch import nn

from mortalnet.nets.ff import Activation, activate, normalize_rows, product

Weights = tuple[list[torch.Tensor], list[torch.Tensor]]
"""(up, down) as the products use them: the fp32 parameters or their low-precision copies."""


class RecurrentFFNet(nn.Module):
    """Weights of the recurrent FF net: bottom-up `up[l]` (H_{l-1}, H_l) and top-down `down[l]`
    (H_{l+1}, H_l) for hidden layer l (0-based here), biases `bias[l]` (H_l,).

    Args:
        input_dim: image pixels (784).
        hidden: hidden widths, e.g. (2000, 2000).
        num_classes: size of the clamped label layer on top.
        damping: weight of the old state (0.3 in the paper).
        label_strength: scale of the top layer, the normalized one-hot label (mean square 1, like the
            normalized activities a layer sees from its neighbours, times this).
    """

    def __init__(self, input_dim: int, hidden: tuple[int, ...], num_classes: int = 10, damping: float = 0.3,
                 label_strength: float = 1.0, activation: Activation = "relu",
                 generator: torch.Generator | None = None, device=None):
        super().__init__()
        if not hidden:
            raise ValueError("the recurrent FF net needs at least one hidden layer")
        if not 0.0 <= damping < 1.0:
            raise ValueError(f"damping must be in [0, 1), got {damping}")
        self.damping, self.label_strength, self.activation = damping, label_strength, activation
        self.num_classes = num_classes
        dims = (input_dim, *hidden, num_classes)

        def init(fan_in: int, fan_out: int) -> nn.Parameter:
            w = torch.randn(fan_in, fan_out, generator=generator, device=device) / fan_in**0.5
            return nn.Parameter(w, requires_grad=False)

        self.up = nn.ParameterList(init(dims[i], dims[i + 1]) for i in range(len(hidden)))
        self.down = nn.ParameterList(init(dims[i + 2], dims[i + 1]) for i in range(len(hidden)))
        self.bias = nn.ParameterList(
            nn.Parameter(torch.zeros(h, device=device), requires_grad=False) for h in hidden
        )

    @property
    def hidden(self) -> tuple[int, ...]:
        return tuple(b.shape[0] for b in self.bias)

    def product_weights(self, dtype: torch.dtype = torch.float32) -> Weights:
        """(up, down) for the products: the parameters themselves (float32) or copies in `dtype`."""
        if dtype == torch.float32:
            return list(self.up), list(self.down)
        return [w.to(dtype) for w in self.up], [w.to(dtype) for w in self.down]

    def label_layer(self, labels: torch.Tensor) -> torch.Tensor:
        """(N,) labels -> (N, C) normalized one-hot top layer (the label is clamped)."""
        onehot = torch.nn.functional.one_hot(labels, self.num_classes).float()
        return normalize_rows(onehot) * self.label_strength

    def image_input(self, images: torch.Tensor, weights: Weights | None = None) -> torch.Tensor:
        """norm(x) W_up_1: (N, D) -> (N, H_1), the same at every time step."""
        up, _ = weights or self.product_weights()
        return product(normalize_rows(images), up[0])

    def bottom_up(self, image_in: torch.Tensor, weights: Weights | None = None) -> list[torch.Tensor]:
        """Step 0: a single bottom-up pass (no top-down input): [h_l(0)] (N, H_l)."""
        up, _ = weights or self.product_weights()
        states = [activate(image_in + self.bias[0], self.activation)]
        for l in range(1, len(self.bias)):
            states.append(activate(product(normalize_rows(states[-1]), up[l]) + self.bias[l], self.activation))
        return states

    def total_inputs(self, image_in: torch.Tensor, label_top: torch.Tensor, states: list[torch.Tensor],
                     weights: Weights | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """z_l(t) for every layer from the states at t-1; also the normalized inputs each layer saw.

        Returns (z, seen) where seen[l] = (norm(h_{l-1}(t-1)) or None for l = 0, norm(h_{l+1}(t-1)) or
        label), in the weights' dtype (what the products multiplied).
        """
        up, down = weights or self.product_weights()
        dtype = up[0].dtype
        L = len(states)
        normed = [normalize_rows(s).to(dtype) for s in states]
        z, seen = [], []
        for l in range(L):
            below = normed[l - 1] if l > 0 else None
            above = normed[l + 1] if l + 1 < L else label_top.to(dtype)
            zl = (image_in if l == 0 else product(below, up[l])) + product(above, down[l]) + self.bias[l]
            z.append(zl)
            seen.append((below, above))
        return z, seen

    def step(self, image_in: torch.Tensor, label_top: torch.Tensor, states: list[torch.Tensor],
             weights: Weights | None = None):
        """One synchronous damped update: returns (new states, total inputs, inputs seen)."""
        z, seen = self.total_inputs(image_in, label_top, states, weights)
        a = self.damping
        new = [a * s + (1.0 - a) * activate(zl, self.activation) for s, zl in zip(states, z)]
        return new, z, seen

    def run(self, images: torch.Tensor, labels: torch.Tensor, steps: int) -> list[list[torch.Tensor]]:
        """States at steps 0..steps for images (N, D) with labels (N,) clamped on top."""
        image_in = self.image_input(images)
        label_top = self.label_layer(labels)
        states = self.bottom_up(image_in)
        history = [states]
        for _ in range(steps):
            states, _, _ = self.step(image_in, label_top, states)
            history.append(states)
        return history
