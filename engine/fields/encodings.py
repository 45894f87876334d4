"""Input encodings for the neural fields: NeRF positional encoding, multi-resolution hash grid, tiny MLP.

Everything is plain PyTorch so it runs on CPU (the default target) and on CUDA alike; the device
and dtype follow the module's parameters. The hash grid is differentiable w.r.t. its tables *and*
its input points (autograd through the trilinear weights), so SDF normals and the eikonal term can
be taken by autograd, double backward included.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

# Spatial-hash primes of Müller et al. 2022 (the first is 1 for cache coherence along x).
HASH_PRIMES = (1, 2654435761, 805459861)


class PositionalEncoding(nn.Module):
    """NeRF frequency encoding: [x, sin(2^0 π x), cos(2^0 π x), ..., sin(2^(K-1) π x), cos(2^(K-1) π x)].

    Attributes:
        out_dim: Width of the encoding, `in_dim * (include_input + 2 * n_freqs)`.
    """

    def __init__(self, n_freqs: int, include_input: bool = True, in_dim: int = 3):
        """Args:
        n_freqs: Number of octaves K (0 gives just the input, or nothing).
        include_input: Whether to prepend the raw input.
        in_dim: Width D of the input.
        """
        super().__init__()
        self.n_freqs = n_freqs
        self.include_input = include_input
        self.in_dim = in_dim
        self.out_dim = in_dim * (int(include_input) + 2 * n_freqs)
        self.register_buffer("freqs", (2.0 ** torch.arange(n_freqs)) * math.pi, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encodes points.

        Args:
            x: [..., D] inputs.

        Returns:
            [..., out_dim]; per octave the sin block then the cos block.
        """
        parts = [x] if self.include_input else []
        if self.n_freqs:
            xf = x[..., None, :] * self.freqs.to(x.dtype)[:, None]  # [..., K, D]
            sc = torch.stack([torch.sin(xf), torch.cos(xf)], dim=-2)  # [..., K, 2, D]
            parts.append(sc.flatten(-3))
        if not parts:
            return x.new_zeros(*x.shape[:-1], 0)
        return torch.cat(parts, dim=-1)


@dataclass(frozen=True)
class HashGridConfig:
    """Multi-resolution hash encoding settings (defaults: a mid-size grid that trains on CPU)."""

    levels: int = 12
    """Number of resolution levels L."""
    features_per_level: int = 2
    """Feature width F per level; the encoding is L * F wide."""
    log2_table_size: int = 17
    """log2 of the per-level table size T (hash collisions above it)."""
    base_resolution: int = 16
    """Cells per axis of the coarsest level."""
    max_resolution: int = 512
    """Cells per axis of the finest level (levels grow geometrically in between)."""
    init_scale: float = 1e-4
    """Table entries start uniform in [-init_scale, init_scale]."""


def level_resolutions(config: HashGridConfig) -> list[int]:
    """Cells per axis of each level: floor(N_min * b^l), b = (N_max / N_min)^(1 / (L - 1))."""
    if config.levels == 1:
        return [config.base_resolution]
    growth = math.exp(math.log(config.max_resolution / config.base_resolution) / (config.levels - 1))
    # The epsilon keeps floor() from turning an exact 512 into 511 through rounding of b^l.
    return [int(math.floor(config.base_resolution * growth**lvl + 1e-6)) for lvl in range(config.levels)]


class HashGrid(nn.Module):
    """Multi-resolution hash encoding in 3D (Müller et al. 2022, "Instant NGP").

    Level l has a grid of res_l cells per axis over the bounding box; each grid vertex owns a row of
    a learnable table. Coarse levels whose (res_l + 1)^3 vertices fit in T rows are indexed densely
    (no collisions); finer ones hash the vertex coordinates into T rows. A point's feature per level
    is the trilinear blend of its cell's 8 corner rows; the levels are concatenated.

    All levels live in one flat parameter `table` [sum of level sizes, F] with per-level row offsets,
    so a single gather serves every level and corner.

    Attributes:
        out_dim: L * F.
        resolutions: Cells per axis per level (Python ints).
        dense: Whether each level is indexed densely.
        level_sizes: Rows per level, min(T, (res + 1)^3).
    """

    def __init__(self, config: HashGridConfig, bbox_min: Sequence[float] | torch.Tensor,
                 bbox_max: Sequence[float] | torch.Tensor):
        """Args:
        config: Grid settings.
        bbox_min: [3] lower corner of the encoded box; points outside are clamped onto it.
        bbox_max: [3] upper corner.
        """
        super().__init__()
        self.config = config
        self.n_levels = config.levels
        self.features_per_level = config.features_per_level
        self.out_dim = config.levels * config.features_per_level
        self.table_size = 2**config.log2_table_size
        self.resolutions = level_resolutions(config)
        self.dense = [(r + 1) ** 3 <= self.table_size for r in self.resolutions]
        self.level_sizes = [min(self.table_size, (r + 1) ** 3) for r in self.resolutions]
        # Resolutions grow, so the dense levels are a prefix; the fast path relies on that.
        self.n_dense = sum(self.dense)
        assert all(self.dense[: self.n_dense]) and not any(self.dense[self.n_dense:])

        bmin = torch.as_tensor(bbox_min, dtype=torch.float32).reshape(3)
        bmax = torch.as_tensor(bbox_max, dtype=torch.float32).reshape(3)
        if not bool((bmax > bmin).all()):
            raise ValueError(f"empty bounding box: {bmin.tolist()} .. {bmax.tolist()}")
        self.register_buffer("bbox_min", bmin.clone())
        self.register_buffer("bbox_max", bmax.clone())

        self.table = nn.Parameter(torch.empty(sum(self.level_sizes), config.features_per_level))
        nn.init.uniform_(self.table, -config.init_scale, config.init_scale)

        # Integer lookup constants (int64 buffers: .double()/.half() leave them alone).
        offsets = [0, *itertools.accumulate(self.level_sizes)][:-1]
        self.register_buffer("_offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.register_buffer("_res", torch.tensor(self.resolutions, dtype=torch.int64), persistent=False)
        # Per-level, per-axis multipliers: row strides (1, r+1, (r+1)^2) for dense levels, primes otherwise.
        mult = [[1, r + 1, (r + 1) ** 2] if d else list(HASH_PRIMES) for r, d in zip(self.resolutions, self.dense)]
        self.register_buffer("_mult", torch.tensor(mult, dtype=torch.int64), persistent=False)
        self._active = config.levels

    @property
    def active_levels(self) -> int:
        """Number of levels currently contributing (the rest output zeros)."""
        return self._active

    def set_active_levels(self, k: int) -> None:
        """Coarse-to-fine training: only levels < k contribute; levels >= k output zeros.

        Args:
            k: Active level count, clipped to [0, L].
        """
        self._active = max(0, min(int(k), self.n_levels))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Maps points [N, 3] into the unit cube [0, 1]^3 of the bounding box, clamping outliers."""
        dt = self.table.dtype
        lo, hi = self.bbox_min.to(dt), self.bbox_max.to(dt)
        # nan_to_num: a diverged step must give a NaN loss (skipped), not an out-of-range gather.
        return torch.nan_to_num((x.to(dt) - lo) / (hi - lo)).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encodes points.

        Args:
            x: [N, 3] world points (any leading shape [..., 3] works too).

        Returns:
            [N, L * F] features, level-major (level l occupies columns [l F, (l + 1) F)).
        """
        lead = x.shape[:-1]
        xn = self.normalize(x.reshape(-1, 3))  # [N, 3]
        n, k, f = xn.shape[0], self._active, self.features_per_level
        if k == 0:
            return xn.new_zeros(*lead, self.out_dim)

        res = self._res[:k]
        p = xn[:, None, :] * res[None, :, None]  # [N, k, 3] in cell units
        # Clamp so that a point on the far face sits in the last cell with weight 1, not outside.
        cell = p.detach().floor().long().minimum((res - 1)[None, :, None])  # [N, k, 3]
        frac = p - cell.to(p.dtype)  # gradient w.r.t. points flows through here

        # Per-axis terms for the two corner choices (0 / 1) -> [N, k, 3, 2]; a corner combines one
        # term per axis (sum for dense levels, XOR for hashed ones), so the 8 corners are a broadcast
        # to [N, k, 2, 2, 2] (corner offsets along x, y, z).
        terms = torch.stack([cell, cell + 1], dim=-1) * self._mult[:k, :, None]
        idx_parts = []
        nd = min(self.n_dense, k)
        if nd:
            t = terms[:, :nd]
            idx_parts.append(t[..., 0, :, None, None] + t[..., 1, None, :, None] + t[..., 2, None, None, :])
        if k > nd:
            t = terms[:, nd:]
            h = t[..., 0, :, None, None] ^ t[..., 1, None, :, None] ^ t[..., 2, None, None, :]
            idx_parts.append(h & (self.table_size - 1))  # T is a power of two: & is mod T
        idx = torch.cat(idx_parts, dim=1) + self._offsets[:k, None, None, None]  # [N, k, 2, 2, 2]

        # index_select, not embedding/indexing: its backward (scatter-add) is several times faster on CPU.
        c = self.table.index_select(0, idx.reshape(-1)).reshape(n, k, 2, 2, 2, f)  # corners (x, y, z)
        # Trilinear interpolation as three nested lerps (z, then y, then x): fewer ops, forward and
        # backward, than forming the 8 corner weights. unbind (not c[..., 0, :]) because its backward
        # is one stack, where each indexing op's backward would zero-fill a full-size gradient.
        fx, fy, fz = (t[..., None] for t in frac.unbind(-1))  # [N, k, 1] each
        c0, c1 = c.unbind(-2)  # [N, k, 2, 2, F]: z = 0 / 1
        c0, c1 = (c0 + fz[:, :, None, None] * (c1 - c0)).unbind(-2)  # [N, k, 2, F]: y = 0 / 1
        c0, c1 = (c0 + fy[:, :, None] * (c1 - c0)).unbind(-2)  # [N, k, F]: x = 0 / 1
        c = c0 + fx * (c1 - c0)  # [N, k, F]
        out = c.reshape(n, k * f)
        if k < self.n_levels:
            out = torch.cat([out, out.new_zeros(n, (self.n_levels - k) * f)], dim=1)
        return out.reshape(*lead, self.out_dim)

    def extra_repr(self) -> str:
        return (f"levels={self.n_levels}, F={self.features_per_level}, T=2^{self.config.log2_table_size}, "
                f"res={self.resolutions[0]}..{self.resolutions[-1]}, dense_levels={self.n_dense}")


def hash_grid_reference(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Slow, obvious twin of `HashGrid.forward`, for tests: explicit loops over levels and corners.

    Recomputes the level layout from `grid.config` rather than reusing the fast path's buffers.

    Args:
        grid: The grid whose `table`, bounding box and active level count are used.
        x: [N, 3] world points.

    Returns:
        [N, L * F] features.
    """
    cfg = grid.config
    table_size = 2**cfg.log2_table_size
    dtype = grid.table.dtype
    lo = grid.bbox_min.to(dtype)
    hi = grid.bbox_max.to(dtype)
    u = ((x.to(dtype) - lo) / (hi - lo)).clamp(0.0, 1.0)

    if cfg.levels == 1:
        resolutions = [cfg.base_resolution]
    else:
        b = (cfg.max_resolution / cfg.base_resolution) ** (1.0 / (cfg.levels - 1))
        resolutions = [int(math.floor(cfg.base_resolution * b**i + 1e-6)) for i in range(cfg.levels)]

    outputs = []
    row = 0
    for level, res in enumerate(resolutions):
        n_vertices = (res + 1) ** 3
        size = min(n_vertices, table_size)
        level_table = grid.table[row:row + size]
        row += size
        if level >= grid.active_levels:
            outputs.append(torch.zeros(x.shape[0], cfg.features_per_level, dtype=dtype, device=x.device))
            continue
        pos = u * res
        base = torch.clamp(torch.floor(pos.detach()), max=res - 1).long()
        t = pos - base.to(dtype)
        acc = torch.zeros(x.shape[0], cfg.features_per_level, dtype=dtype, device=x.device)
        for corner in itertools.product((0, 1), repeat=3):
            weight = torch.ones(x.shape[0], dtype=dtype, device=x.device)
            coords = []
            for axis in range(3):
                weight = weight * (t[:, axis] if corner[axis] else 1.0 - t[:, axis])
                coords.append(base[:, axis] + corner[axis])
            if n_vertices <= table_size:
                index = coords[0] + coords[1] * (res + 1) + coords[2] * (res + 1) ** 2
            else:
                index = (coords[0] * HASH_PRIMES[0]) ^ (coords[1] * HASH_PRIMES[1]) ^ (coords[2] * HASH_PRIMES[2])
                index = torch.remainder(index, table_size)
            acc = acc + weight[:, None] * level_table[index]
        outputs.append(acc)
    return torch.cat(outputs, dim=1)


class TinyMLP(nn.Sequential):
    """Plain MLP: Linear -> act -> ... -> Linear (no output activation).

    `n_hidden_layers` hidden layers of width `hidden`; 0 gives a single linear map.
    """

    def __init__(self, in_dim: int, hidden: int, n_hidden_layers: int, out_dim: int,
                 activation: str = "relu", last_zero_init: bool = False, softplus_beta: float = 100.0):
        """Args:
        in_dim: Input width.
        hidden: Hidden width.
        n_hidden_layers: Number of hidden layers.
        out_dim: Output width.
        activation: "relu" or "softplus" (smooth, so second derivatives exist for the eikonal term).
        last_zero_init: Zero the last layer's weight and bias, so the output starts at exactly 0
            (a residual on top of something else then starts as the identity).
        softplus_beta: Sharpness of softplus; 100 (as in IDR/NeuS) is near-ReLU yet smooth.
        """
        if activation not in ("relu", "softplus"):
            raise ValueError(f"unknown activation {activation!r} (expected 'relu' or 'softplus')")
        widths = [in_dim] + [hidden] * n_hidden_layers + [out_dim]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(nn.ReLU() if activation == "relu" else nn.Softplus(beta=softplus_beta))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim
        if last_zero_init:
            last = layers[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
