"""Refinement settings: one dataclass, filled from a preset YAML (resources/presets) and options."""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import yaml

from engine.errors import UserError
from engine.settings import check_choices

log = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).resolve().parents[2] / "resources" / "presets"

# Choices shared by several configs (and the CLI and the app, which generate their lists from these).
Preset = Literal["fast", "vid2avatar"]
MorphLoss = Literal["v1", "v2"]
PriorShares = Literal["geometry", "all"]
# How a fit uses a prior (engine/refine/prior_file.py): refine everything, or inference (shared fields fixed).
PriorMode = Literal["refine", "inference"]


@dataclass(frozen=True)
class RefineConfig:
    """How the avatar is optimised (the two presets: resources/presets, docs/ARCHITECTURE.md)."""

    preset: Preset = "fast"
    """Preset name the other values came from: fast (default) or vid2avatar (faithful baseline)."""
    sdf: Literal["hash", "mlp"] = "hash"
    """SDF field: hash (body SDF grid + hash-grid residual) or mlp (8x256 MLP, Vid2Avatar)."""
    hash_levels: int = 12
    """Hash grid levels."""
    hash_log2_table: int = 16
    """log2 of the hash table size per level."""
    hash_max_res: int = 512
    """Finest hash grid resolution over the canonical box."""
    mlp_width: int = 256
    """Width of the MLP SDF (mlp field)."""
    mlp_depth: int = 8
    """Layers of the MLP SDF (mlp field)."""
    sampler: Literal["shell", "uniform"] = "shell"
    """Ray sampler: shell (window around the surface inside the body shell) or uniform (+ importance)."""
    rays: int = 512
    """Rays per step."""
    coarse_samples: int = 32
    """Samples per ray of the no-grad search pass."""
    fine_samples: int = 16
    """Samples per ray that are rendered with gradients."""
    shell: float = 0.5
    """Points farther than this from the posed body are always empty (metres); nearer, the occupancy grid
    decides."""
    occupancy_voxel: float = 0.02
    """Cell size of the canonical occupancy grid (metres)."""
    occupancy_band: float = 0.45
    """The occupancy grid starts as every cell nearer than this to the naked body (metres): loose clothing
    far from the body can grow there."""
    occupancy_keep: float = 0.1
    """At each occupancy update, cells whose SDF is above this everywhere in the cell become empty (unless
    a ray in the person mask wanted them); the rest grow by `occupancy_grow` cells."""
    occupancy_grow: int = 2
    """Cells the kept occupancy grows by at each update (how far the surface may move between updates)."""
    occupancy_every: int = 100
    """Steps between occupancy updates."""
    w_silhouette: float = 0.5
    """Weight of the silhouette term: a ray inside the person mask that meets no surface pulls the SDF
    below zero at its closest sample (grows loose clothing out to the mask)."""
    person_ray_fraction: float = 0.9
    """Fraction of rays drawn inside the person's box."""
    lr: float = 1e-2
    """Learning rate of the fields."""
    lr_pose: float = 2e-3
    """Learning rate of the per-frame pose and translation refinement (0 freezes the body)."""
    pose_start: float = 0.3
    """Fraction of the run after which the body is refined (earlier, photometric gradients would bend
    poses to fit a still-wrong shape)."""
    w_pose_smooth: float = 0.0
    """Weight of the temporal smoothness of refined poses (each training frame against the interpolation
    of its neighbours)."""
    beta_init: float = 0.02
    """Initial Laplace scale of the density (metres)."""
    beta_end: float = 0.0
    """If > 0, the density scale is capped by a schedule going from beta_init to this over the first 60% of the run."""
    w_rgb: float = 1.0
    """Weight of the L1 colour loss."""
    w_eikonal: float = 0.1
    """Weight of the eikonal loss."""
    w_bce: float = 5e-3
    """Weight of the ray-opacity binary entropy (pushes opacity to 0 or 1)."""
    w_sparse: float = 0.1
    """Weight of the opacity sparseness loss on rays off the body (ramped up over the first 20% of steps)."""
    w_inshape: float = 0.1
    """Weight of the in-shape loss (deep inside the body must stay inside)."""
    w_mask: float = 0.5
    """Weight of the optional person-mask loss on opacity (0 disables)."""
    incremental: Literal["none", "linear", "squared"] = "none"
    """Incremental sampling profile: none, linear or squared (rays up, samples per ray down)."""
    time_consistency: Literal["none", "displacement", "sdf"] = "none"
    """Time-consistency regulariser: none, displacement or sdf."""
    w_time: float = 0.01
    """Weight of the time-consistency regulariser."""
    eikonal_points: int = 2048
    """Points per step for the eikonal loss (finite differences), normal smoothness points included."""
    w_normal_smooth: float = 0.0
    """Weight of normal smoothness: normals of surface points against normals a centimetre away (removes
    ripples; real folds are wider and carry photometric evidence)."""
    normal_points: int = 64
    """Surface points per step for normal smoothness (each costs two of the eikonal points)."""
    w_detail: float = 0.0
    """Weight of the face-and-hands term: the SDF's residual over the naked body is kept small on the face
    and the hands, which a full-body video rarely resolves."""
    coarse_to_fine: float = 0.5
    """Fraction of the steps over which hash levels are unlocked (0: all from the start)."""
    seed: int = 0
    """Random seed."""
    video_code_dim: int = 0
    """Size of a per-video latent code read by the SDF residual network (and through its features the
    colour field): with one, a prior's shared fields can describe many people (priors use 16)."""
    geometry_encoder: bool = False
    """Seed thesis option: a small U-Net encodes the frame; pixel-aligned features and the canonical point
    predict a displacement of the canonical point (x' = x_c + morph_factor * displacement)."""
    morph_factor: float = 0.5
    """Morphing factor μ of the geometry encoder's displacement."""
    morph_loss: MorphLoss = "v2"
    """Morphing loss on the displacements: v1 (sum of their norms) or v2 (mean)."""
    w_morph: float = 0.01
    """Weight of the morphing loss."""
    prior_shares: PriorShares = "geometry"
    """What a prior shares across videos: geometry (SDF residual and geometry encoder; every video fits
    its own colour field) or all (the colour field too)."""
    freeze_shared: bool = False
    """Keep a prior's shared fields fixed: only the per-video parts (code, colour unless shared,
    background, density scale, body) are fitted (`fit --prior DIR --mode inference`)."""

    def validate(self) -> None:
        check_choices(self)
        if self.video_code_dim < 0 or (self.video_code_dim and self.sdf != "hash"):
            raise UserError("video_code_dim must be 0, or positive with the hash SDF (fast preset).")
        if not 0 <= self.morph_factor <= 1:
            raise UserError(f"--morph-factor must be in [0, 1] (got {self.morph_factor}).")
        for name in ("rays", "coarse_samples", "fine_samples"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1.")
        if not 0 < self.occupancy_voxel <= 0.1 or self.occupancy_every < 1 or self.occupancy_grow < 0:
            raise UserError("occupancy_voxel must be in (0, 0.1] m, occupancy_every ≥ 1, occupancy_grow ≥ 0.")
        if not self.lr > 0:
            raise UserError("--lr must be positive.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> RefineConfig:
        """A config saved by this or an older version (settings that no longer exist are ignored)."""
        known = {f.name for f in fields(RefineConfig)}
        unknown = tuple(sorted(set(d) - known))
        if unknown and unknown not in _warned_unknown:  # a checkpoint is re-read often: say it once
            _warned_unknown.add(unknown)
            log.warning("ignoring setting(s) this version no longer has: %s", ", ".join(unknown))
        return RefineConfig(**{k: v for k, v in d.items() if k in known})


_warned_unknown: set[tuple[str, ...]] = set()
PRESETS: tuple[str, ...] = typing.get_args(Preset)


def load_preset(name: str, **overrides) -> RefineConfig:
    """A preset from resources/presets/NAME.yaml with `overrides` (None values ignored)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    data = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text()) or {}
    data["preset"] = name
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(RefineConfig)}
    unknown = set(data) - known
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(sorted(unknown))} in preset {name}.")
    cfg = RefineConfig(**data)
    cfg.validate()
    return cfg
