"""Where in canonical space the avatar's surface may be: a grid of occupied cells that follows the SDF.

The sampler only asks the fields about points inside occupied cells (everything else is empty space),
in the spirit of instant-ngp's and InstantAvatar's occupancy grids. The grid starts as a generous band
around the naked body, so loose clothing far from the body (a dress hem, a coat) is inside it. As the
fit goes, `update` keeps the cells near or inside the current surface, grown by a margin so the surface
can still move, and keeps cells where the person mask showed the person but rays found no surface yet
(`mark`): empty space is skipped, and cloth that the masks call for is never cut off.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

SdfFn = Callable[[torch.Tensor], torch.Tensor]


class OccupancyGrid(nn.Module):
    """Occupied cells of a regular grid over the canonical box (buffers: saved with the avatar).

    Args:
        lo, hi: [3] corners of the canonical box (the hash grid's).
        voxel: cell size (metres).
    """

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, voxel: float) -> None:
        super().__init__()
        dims = torch.ceil((hi - lo) / voxel).long().clamp(min=1)
        self.register_buffer("lo", lo.detach().clone().float())
        self.register_buffer("voxel", torch.tensor(float(voxel)))
        self.register_buffer("occupied", torch.zeros(*dims.tolist(), dtype=torch.bool))
        # Cells a ray inside the person mask reached without meeting the surface since the last update.
        self.register_buffer("wanted", torch.zeros(*dims.tolist(), dtype=torch.bool))
        # How far the occupied region reaches from the naked body (metres): bounds the rays' search box.
        self.register_buffer("reach", torch.tensor(0.0))
        self._cells: torch.Tensor | None = None  # flat indices of the occupied cells, while they stand

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cells = None
        super()._load_from_state_dict(*args, **kwargs)

    def occupied_cells(self) -> torch.Tensor:
        """Flat indices [N] of the occupied cells (found once per change of the grid, not per step)."""
        if self._cells is None or self._cells.device != self.occupied.device:
            self._cells = self.occupied.view(-1).nonzero()[:, 0]
        return self._cells

    @property
    def dims(self) -> tuple[int, int, int]:
        return tuple(self.occupied.shape)

    def centres(self, flat: torch.Tensor) -> torch.Tensor:
        """Centres [N, 3] of the cells with flat indices `flat` [N]."""
        X, Y, Z = self.dims
        ix = torch.stack([flat // (Y * Z), (flat // Z) % Y, flat % Z], -1)
        return self.lo + (ix.float() + 0.5) * self.voxel

    def _flat(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat cell index [P] of canonical points [P, 3], and whether they are inside the grid [P]."""
        ix = torch.floor((x.detach() - self.lo) / self.voxel).long()
        dims = torch.tensor(self.dims, device=x.device)
        inside = ((ix >= 0) & (ix < dims)).all(-1)  # NaN floors to a negative integer: outside
        ix = torch.where(inside[:, None], ix, torch.zeros_like(ix))
        X, Y, Z = self.dims
        return (ix[:, 0] * Y + ix[:, 1]) * Z + ix[:, 2], inside

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """Whether canonical points [P, 3] lie in occupied cells [P] (points outside the grid do not)."""
        flat, inside = self._flat(x)
        return inside & self.occupied.view(-1)[flat]

    def mark(self, x: torch.Tensor) -> None:
        """Keeps the cells of canonical points [P, 3] at the next update (rays in the person mask that
        found no surface: the surface has to grow towards them)."""
        flat, inside = self._flat(x)
        # A max-scatter, not boolean indexing: no host round trip on a GPU (outside points write 0).
        self.wanted.view(-1).view(torch.uint8).scatter_reduce_(0, flat, inside.to(torch.uint8), reduce="amax")

    @torch.no_grad()
    def fill(self, body_sdf: SdfFn, band: float, chunk: int = 262144) -> None:
        """Occupies every cell whose centre is nearer than `band` to the naked body, or inside it."""
        n = self.occupied.numel()
        occ = torch.zeros(n, dtype=torch.bool, device=self.occupied.device)
        for s in range(0, n, chunk):
            flat = torch.arange(s, min(n, s + chunk), device=occ.device)
            occ[flat] = body_sdf(self.centres(flat)) < band
        self.occupied.copy_(occ.view(self.dims))
        self._cells = None
        self.reach.fill_(band + self.half_diagonal)
        self.wanted.zero_()

    @property
    def half_diagonal(self) -> float:
        return 0.5 * math.sqrt(3) * float(self.voxel)

    @torch.no_grad()
    def update(self, sdf: SdfFn, body_sdf: SdfFn, keep: float, grow: int, chunk: int = 65536) -> None:
        """Keeps the occupied cells whose SDF may be below `keep` anywhere in the cell (the SDF at the centre
        minus the half diagonal), and the `wanted` ones; then grows them by `grow` cells."""
        flat_all = self.occupied.view(-1).nonzero()[:, 0]
        kept = torch.zeros(self.occupied.numel(), dtype=torch.bool, device=self.occupied.device)
        for s in range(0, len(flat_all), chunk):
            flat = flat_all[s : s + chunk]
            kept[flat] = sdf(self.centres(flat)) - self.half_diagonal < keep
        kept = kept.view(self.dims) | (self.wanted & self.occupied)
        if grow > 0:
            k = 2 * grow + 1
            kept = F.max_pool3d(kept[None, None].float(), k, stride=1, padding=grow)[0, 0] > 0
        self.occupied.copy_(kept)
        self._cells = None
        self.wanted.zero_()
        self.reach.fill_(self._reach(body_sdf, chunk))

    def _reach(self, body_sdf: SdfFn, chunk: int) -> float:
        flat_all = self.occupied.view(-1).nonzero()[:, 0]
        far = 0.0
        for s in range(0, len(flat_all), chunk):
            far = max(far, float(body_sdf(self.centres(flat_all[s : s + chunk])).max()))
        return far + self.half_diagonal

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Corners [3], [3] of the box around the occupied cells."""
        ix = self.occupied.nonzero()
        if not len(ix):
            return self.lo.clone(), self.lo.clone()
        return self.lo + ix.min(0).values * self.voxel, self.lo + (ix.max(0).values + 1) * self.voxel

    def fraction(self) -> float:
        """Share of the grid's cells that are occupied."""
        return float(self.occupied.float().mean())
