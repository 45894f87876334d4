"""The avatar's learnable parts: canonical SDF + colour fields, density scale, background plate,
and per-frame body refinements."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from engine.fields.body_sdf import BodySDFGrid
from engine.fields.encodings import HashGrid, HashGridConfig, PositionalEncoding, TinyMLP
from engine.fields.geometry_encoder import GeometryEncoder
from engine.refine.config import RefineConfig
from engine.refine.occupancy import OccupancyGrid
from engine.refine.prior_file import shared_parameters

FEATURES = 15  # geometry features passed from the SDF field to the colour field (hash field)


class HashSDF(nn.Module):
    """Fast path: body SDF grid + hash-grid residual (zero at init, so step 0 is the body)."""

    def __init__(self, body_grid: BodySDFGrid, cfg: RefineConfig) -> None:
        super().__init__()
        self.body = body_grid
        hcfg = HashGridConfig(levels=cfg.hash_levels, log2_table_size=cfg.hash_log2_table,
                              max_resolution=cfg.hash_max_res)
        self.grid = HashGrid(hcfg, body_grid.lo, body_grid.hi)
        d = cfg.video_code_dim
        self.net = TinyMLP(hcfg.levels * hcfg.features_per_level + d, 64, 1, 1 + FEATURES, last_zero_init=True)
        # This video's latent code (per video; the networks reading it are what a prior shares).
        self.code = nn.Parameter(torch.zeros(d)) if d else None
        self.feature_dim = FEATURES

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[P, 3] canonical → SDF [P], features [P, F] (they also carry the video code to the colour field)."""
        h = self.grid(x)
        if self.code is not None:
            h = torch.cat([h, self.code.expand(len(h), -1)], -1)
        out = self.net(h)
        return self.body(x) + out[:, 0], out[:, 1:]

    def body_sdf(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MLPSDF(nn.Module):
    """Vid2Avatar's implicit network: 8x256 Softplus(β=100) MLP, weight norm, skip at layer 4,
    6-frequency positional encoding; fitted to the body SDF before training (`pretrain`)."""

    def __init__(self, body_grid: BodySDFGrid, cfg: RefineConfig) -> None:
        super().__init__()
        self.body = body_grid  # for shells, in-shape and the initial fit only
        self.pe = PositionalEncoding(6)
        w, d = cfg.mlp_width, cfg.mlp_depth
        self.skip = d // 2
        dims = [self.pe.out_dim] + [w] * (d - 1) + [1 + w]
        layers = []
        for i in range(d):
            out_dim = dims[i + 1] - (self.pe.out_dim if i + 1 == self.skip else 0)
            lin = nn.Linear(dims[i], out_dim)
            layers.append(nn.utils.parametrizations.weight_norm(lin))
        self.layers = nn.ModuleList(layers)
        self.act = nn.Softplus(beta=100)
        self.feature_dim = w
        self.center = nn.Parameter((body_grid.lo + body_grid.hi) / 2, requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h0 = self.pe(x - self.center)
        h = h0
        for i, layer in enumerate(self.layers):
            if i == self.skip:
                h = torch.cat([h, h0], -1) / math.sqrt(2)
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h[:, 0], h[:, 1:]

    def body_sdf(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Avatar(nn.Module):
    """Everything that is optimised for one video."""

    def __init__(self, cfg: RefineConfig, body_grid: BodySDFGrid, num_frames: int, num_pose_bones: int,
                 background: np.ndarray) -> None:
        super().__init__()
        self.cfg = cfg
        self.sdf = HashSDF(body_grid, cfg) if cfg.sdf == "hash" else MLPSDF(body_grid, cfg)
        pe = PositionalEncoding(4)
        self.color_pe = pe
        hidden, layers = (64, 2) if cfg.sdf == "hash" else (256, 4)
        self.color = TinyMLP(self.sdf.feature_dim + pe.out_dim, hidden, layers, 3)
        self.log_beta = nn.Parameter(torch.tensor(math.log(cfg.beta_init)))
        bg = torch.as_tensor(background, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        self.background = nn.Parameter(torch.logit(bg))  # [H, W, 3]
        # Per-frame refinements as sparse embeddings: a step only touches (and its optimiser only
        # moves) the frame it rendered, so rarely visited frames do not drift on stale momentum.
        self.pose_delta = nn.Embedding(num_frames, num_pose_bones * 3, sparse=True)
        self.transl_delta = nn.Embedding(num_frames, 3, sparse=True)
        nn.init.zeros_(self.pose_delta.weight)
        nn.init.zeros_(self.transl_delta.weight)
        self.num_pose_bones = num_pose_bones
        # Upper bound on β set by the fit loop's annealing schedule; a buffer so checkpoints keep it.
        self.register_buffer("beta_cap", torch.tensor(float("inf")))
        self.encoder = GeometryEncoder() if cfg.geometry_encoder else None
        # Where the sampler looks (engine/refine/occupancy.py); per video, saved with the avatar.
        self.occupancy = OccupancyGrid(body_grid.lo, body_grid.hi, cfg.occupancy_voxel)
        self.occupancy.fill(body_grid, cfg.occupancy_band)
        if cfg.freeze_shared:
            for p in shared_parameters(self).values():
                p.requires_grad_(False)

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        """Also reads avatars saved before the occupancy grid existed (they keep the initial band)."""
        state = dict(state)
        own = {k: v for k, v in self.state_dict().items() if k.startswith("occupancy.")}
        for k, v in own.items():
            state.setdefault(k, v)
        return super().load_state_dict(state, strict=strict, assign=assign)

    def update_occupancy(self) -> None:
        """Fits the occupancy grid to the current SDF (engine/refine/occupancy.py)."""
        cfg = self.cfg
        self.occupancy.update(lambda x: self.sdf(x)[0], self.sdf.body_sdf, cfg.occupancy_keep, cfg.occupancy_grow)

    def frame_deltas(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pose [B, 3] and translation [3] refinements of frame i (differentiable, sparse grads)."""
        idx = torch.tensor([i], device=self.pose_delta.weight.device)
        return self.pose_delta(idx).view(self.num_pose_bones, 3), self.transl_delta(idx)[0]

    @property
    def beta(self) -> torch.Tensor:
        return torch.minimum(self.log_beta.exp().clamp(min=1e-3), self.beta_cap)

    def rgb(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """[P, 3] canonical points + features → colours in [0, 1]."""
        return torch.sigmoid(self.color(torch.cat([features, self.color_pe(x)], -1)))

    def background_at(self, pix: torch.Tensor) -> torch.Tensor:
        """[R, 2] integer pixel (x, y) → [R, 3]."""
        return torch.sigmoid(self.background[pix[:, 1], pix[:, 0]])

    def field_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(("pose_delta", "transl_delta"))]

    def body_parameters(self) -> list[nn.Parameter]:
        return [self.pose_delta.weight, self.transl_delta.weight]
