"""Locally connected layers: local receptive fields without weight sharing (Hinton 2022, secs. 3.2, 3.4).

Each hidden unit at position (y, x) of a C_out x H x W topographic map has its own k x k receptive
field in all C_in channels of the layer below ("same" zero padding, stride 1), and its own weights:
like a convolution, but nothing is shared. Units are ordered (channel, row, column), so a layer's
states (B, C_out*H*W) are an image batch (B, C_out, H, W) for the next layer.

Speed on a CPU. The exact formulation gathers every unit's patch and does one small matrix product
per position; with few channels per position these products are skinny and memory-bound. So the
output map is cut into tiles of th x tw positions: a tile's units together see a
(th+k-1) x (tw+k-1) window, gathered once, and each tile is one dense product with a
fixed 0/1 mask zeroing the connections outside each unit's receptive field (gradients are masked,
so those weights stay exactly 0). Windows are gathered with one row index of h^T (faster than
`F.unfold` here), batch last, so the forward and gradient products read them without copies.
Tile (1, 1) is the exact per-position product; tile (H, W) is a masked dense layer.
`benchmarks/locally_connected.py` measures the tiles against a dense layer of the same FLOPs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mortalnet.nets.ff import Activation, activate


def _tile_mask(c_in: int, c_out: int, k: int, th: int, tw: int) -> torch.Tensor:
    """(c_in*(th+k-1)*(tw+k-1), c_out*th*tw) 0/1: input (ci, ry, rx) feeds unit (co, dy, dx) iff
    dy <= ry < dy + k and dx <= rx < dx + k."""
    wy, wx = th + k - 1, tw + k - 1
    ry = torch.arange(wy)[:, None]  # window rows
    dy = torch.arange(th)[None, :]
    rx = torch.arange(wx)[:, None]
    dx = torch.arange(tw)[None, :]
    my = (ry >= dy) & (ry < dy + k)  # (wy, th)
    mx = (rx >= dx) & (rx < dx + k)  # (wx, tw)
    m = my[:, None, :, None] & mx[None, :, None, :]  # (wy, wx, th, tw)
    m = m[None, :, :, None, :, :].expand(c_in, wy, wx, c_out, th, tw)
    return m.reshape(c_in * wy * wx, c_out * th * tw).float()


def _tile_index(in_shape: tuple[int, int, int], k: int, th: int, tw: int) -> torch.Tensor:
    """(T, C_in*(th+k-1)*(tw+k-1)) long: the flat input index of every element of every tile's
    window, ordered (ci, ry, rx) like `_tile_mask`; positions in the zero padding point to D_in."""
    c, H, W = in_shape
    p = k // 2
    ys = torch.arange(H // th)[:, None] * th - p + torch.arange(th + k - 1)[None, :]  # (TY, wy)
    xs = torch.arange(W // tw)[:, None] * tw - p + torch.arange(tw + k - 1)[None, :]  # (TX, wx)
    Y = ys[:, None, None, :, None]
    X = xs[None, :, None, None, :]
    C = torch.arange(c)[None, None, :, None, None]
    inside = (Y >= 0) & (Y < H) & (X >= 0) & (X < W)
    flat = C * H * W + Y.clamp(0, H - 1) * W + X.clamp(0, W - 1)
    idx = torch.where(inside, flat, torch.tensor(c * H * W))  # (TY, TX, c, wy, wx)
    return idx.reshape((H // th) * (W // tw), -1)


class LocallyConnected2d(nn.Module):
    """A locally connected ReLU layer for FF (no weight sharing), computed in masked tiles.

    Args:
        in_shape: (C_in, H, W) of the layer below.
        out_channels: units per position (C_out).
        kernel: receptive field side k (odd); "same" zero padding keeps H x W.
        tile: (th, tw) output positions per tile; must divide (H, W). None = automatic.
        generator, device: initialization.
        activation: the nonlinearity (see nets.ff.ACTIVATIONS).

    forward: (B, C_in*H*W) normalized activities -> (B, C_out*H*W) states.
    Parameters: `weight` (T, K_t, N_t) per tile (masked), `bias` (C_out*H*W,).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        out_channels: int,
        kernel: int,
        tile: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
        device=None,
        activation: Activation = "relu",
    ):
        super().__init__()
        c_in, H, W = in_shape
        if kernel % 2 != 1 or kernel < 1:
            raise ValueError(f"kernel must be an odd positive size, got {kernel}")
        th, tw = tile if tile is not None else default_tile(H, W, kernel, out_channels)
        if H % th or W % tw:
            raise ValueError(f"tile {th}x{tw} must divide the {H}x{W} map")
        self.in_shape, self.out_channels, self.kernel, self.tile = (c_in, H, W), out_channels, kernel, (th, tw)
        self.activation = activation
        self.n_tiles = (H // th) * (W // tw)
        # fixed structure, rebuilt from the shape (not saved in checkpoints)
        self.register_buffer("mask", _tile_mask(c_in, out_channels, kernel, th, tw).to(device), persistent=False)
        self.register_buffer("index", _tile_index(in_shape, kernel, th, tw).to(device), persistent=False)
        k_t, n_t = self.mask.shape
        w = torch.randn(self.n_tiles, k_t, n_t, generator=generator, device=device) / self.fan_in**0.5
        inside = (self.index < c_in * H * W).float()[:, :, None]  # weights from the zero padding: 0
        self.weight = nn.Parameter(w * self.mask * inside, requires_grad=False)  # (T, K_t, N_t)
        self.bias = nn.Parameter(torch.zeros(out_channels * H * W, device=device), requires_grad=False)

    @property
    def fan_in(self) -> int:
        """Inputs of one unit: C_in * k * k."""
        return self.in_shape[0] * self.kernel**2

    @property
    def fan_out(self) -> int:
        """Units of the layer: C_out * H * W."""
        return self.out_channels * self.in_shape[1] * self.in_shape[2]

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.out_channels, self.in_shape[1], self.in_shape[2])

    def macs_per_example(self) -> int:
        """Multiply-adds of the exact locally connected product: one per (unit, input) connection
        inside the map. Masked zeros do not count, and neither do receptive-field positions in the
        zero padding (their weights are fixed at 0): a unit near the border has fewer than fan_in."""
        c_in, H, W = self.in_shape
        p = self.kernel // 2

        def in_bounds(side: int) -> int:  # sum over output rows of the kernel rows inside the map
            return sum(min(i + p, side - 1) - max(i - p, 0) + 1 for i in range(side))

        return self.out_channels * c_in * in_bounds(H) * in_bounds(W)

    # -- tiles <-> (B, C*H*W) layouts --------------------------------------------------------
    def patches_t(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C_in*H*W) -> (T, K_t, B): each tile's input window, zero padded, batch last.

        One row gather from h^T (with an appended zero row for the padding): cheaper than
        `F.unfold`, and both products below read it without a copy (BLAS transposes).
        """
        hT = torch.cat([h.T, h.new_zeros(1, h.shape[0])])  # (D_in + 1, B)
        return hT[self.index]  # (T, K_t, B)

    def _from_tiles(self, z: torch.Tensor) -> torch.Tensor:
        """(T, B, N_t) with N_t = (C_out, th, tw) -> (B, C_out*H*W)."""
        _, H, W = self.in_shape
        th, tw = self.tile
        B = z.shape[1]
        z = z.reshape(H // th, W // tw, B, self.out_channels, th, tw).permute(2, 3, 0, 4, 1, 5)
        return z.reshape(B, self.fan_out)

    def _to_tiles(self, s: torch.Tensor) -> torch.Tensor:
        """(B, C_out*H*W) -> (T, B, N_t), the inverse of `_from_tiles`."""
        _, H, W = self.in_shape
        th, tw = self.tile
        B = s.shape[0]
        s = s.reshape(B, self.out_channels, H // th, th, W // tw, tw).permute(2, 4, 0, 1, 3, 5)
        return s.reshape(self.n_tiles, B, -1)

    # -- FF layer interface ------------------------------------------------------------------
    def total_input(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C_in*H*W) -> (B, C_out*H*W) pre-activations."""
        z = torch.bmm(self.patches_t(h).transpose(1, 2), self.weight)  # (T, B, N_t)
        return self._from_tiles(z) + self.bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return activate(self.total_input(h), self.activation)

    def local_grads(self, h: torch.Tensor, signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias contractions of input h (B, D_in) with signal (B, D_out): sum_b h^T signal
        restricted to each unit's receptive field, as (T, K_t, N_t) and (D_out,)."""
        gw = torch.bmm(self.patches_t(h), self._to_tiles(signal))  # (T, K_t, N_t)
        return gw.mul_(self.mask), signal.sum(0)

    def _out_index(self) -> torch.Tensor:
        """(T, N_t) flat output-unit index of every column of every tile."""
        units = torch.arange(self.fan_out, device=self.weight.device)[None]  # (1, D_out)
        return self._to_tiles(units).squeeze(1)

    def to_dense(self, tiles: torch.Tensor) -> torch.Tensor:
        """Per-tile (T, K_t, N_t) values (weights or their gradients) -> the (D_in, D_out) matrix."""
        d_in = self.in_shape[0] * self.in_shape[1] * self.in_shape[2]
        dense = tiles.new_zeros(d_in + 1, self.fan_out)
        rows = self.index[:, :, None].expand_as(tiles)
        cols = self._out_index()[:, None, :].expand_as(tiles)
        dense[rows, cols] = tiles * self.mask  # padding entries all land in row d_in, dropped
        return dense[:d_in]

    def from_dense(self, dense: torch.Tensor) -> torch.Tensor:
        """A (D_in, D_out) matrix -> per-tile (T, K_t, N_t), keeping only receptive-field entries."""
        padded = torch.cat([dense, dense.new_zeros(1, dense.shape[1])])
        rows = self.index[:, :, None]
        cols = self._out_index()[:, None, :]
        return padded[rows, cols] * self.mask

    def dense_weight(self) -> torch.Tensor:
        """The equivalent masked dense weight matrix (D_in, D_out) (for tests and plots)."""
        return self.to_dense(self.weight)


def default_tile(H: int, W: int, kernel: int, out_channels: int) -> tuple[int, int]:
    """A tile that keeps the masked overhead small while giving products wide enough for BLAS:
    about 64 units per tile (as measured by benchmarks/locally_connected.py on a CPU)."""
    best, best_cost = (1, 1), math.inf
    for th in [d for d in range(1, H + 1) if H % d == 0]:
        for tw in [d for d in range(1, W + 1) if W % d == 0]:
            units = out_channels * th * tw
            overhead = (th + kernel - 1) * (tw + kernel - 1) / kernel**2  # masked-MAC factor
            narrow = max(1.0, 64.0 / units)  # skinny products run at a fraction of peak
            cost = overhead * narrow
            if cost < best_cost:
                best, best_cost = (th, tw), cost
    return best
