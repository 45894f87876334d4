"""Prior files: the human fields shared across videos (what is shared, and the file that holds them),
written atomically, loaded with weights_only=True. `prior train` (engine/prior) makes them; a fit starts from one.

A prior folder holds `prior.pt` (the shared weights and what they need to be used) and `prior.json`
(the same facts, human-readable). `prior train` also keeps its resumable state in `training/`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from engine.errors import UserError
from engine.io import atomic, torchfile
from engine.refine.config import PriorMode, RefineConfig
from engine.settings import choices, one_of

FORMAT = "avatar-prior"
VERSION = 2  # 2: what is shared is a setting (prior_shares); version 1 always shared the colour field
PRIOR_FILE = "prior.pt"
INFO_FILE = "prior.json"
SHIPPED_PRIOR = Path(__file__).resolve().parents[2] / "resources" / "prior"

# What is shared across videos: the canonical SDF residual and the optional geometry encoder, and with
# prior_shares="all" the colour field. The body SDF grid and the hash grid's box are per video (the residual
# lives in each body's normalised box, so one table serves people of any size); the video code, background,
# density scale and pose refinements are per video.
GEOMETRY_PREFIXES = ("sdf.grid.table", "sdf.net.", "sdf.layers.", "encoder.")
COLOR_PREFIXES = ("color.",)
# Settings that change the shapes or meaning of the shared weights.
ARCHITECTURE = ("sdf", "hash_levels", "hash_log2_table", "hash_max_res", "mlp_width", "mlp_depth", "geometry_encoder",
                "video_code_dim", "prior_shares")


def is_shared(name: str, shares: str) -> bool:
    """Whether an avatar parameter is shared by a prior that shares `shares` (geometry or all)."""
    return name.startswith(GEOMETRY_PREFIXES + (COLOR_PREFIXES if shares == "all" else ()))


def shared_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """Name → parameter of the shared fields of an avatar (what its config's prior_shares names)."""
    return {n: p for n, p in module.named_parameters() if is_shared(n, module.cfg.prior_shares)}


def tie_shared(avatars: list[nn.Module]) -> None:
    """Makes every avatar use the first one's shared parameter objects (one set of weights, one
    gradient, one optimiser state), keeping their per-video parts."""
    ref = shared_parameters(avatars[0])
    for av in avatars[1:]:
        for name, p in ref.items():
            owner, attr = name.rsplit(".", 1)
            setattr(av.get_submodule(owner), attr, p)


@dataclass
class Prior:
    path: Path
    state: dict[str, torch.Tensor]
    config: RefineConfig
    body_model: str
    log_beta: float
    info: dict

    def check_compatible(self, cfg: RefineConfig, body_model: str) -> None:
        """Raises `UserError` when a project or configuration cannot use this prior."""
        if body_model != self.body_model:
            raise UserError(f"the prior {self.path} was trained with body model {self.body_model!r}; "
                            f"this project uses {body_model!r}.")
        if cfg.sdf != self.config.sdf:
            raise UserError(f"the prior {self.path} was trained with the {self.config.sdf} SDF (preset "
                            f"{self.config.preset!r}); this run uses the {cfg.sdf} SDF (preset {cfg.preset!r}).")

    def apply(self, avatar: nn.Module) -> None:
        """Copies the shared weights into a freshly built avatar (and the prior's density scale)."""
        own = shared_parameters(avatar)
        if set(own) != set(self.state):
            raise UserError(f"the prior {self.path} does not fit this avatar (different fields).")
        with torch.no_grad():
            for name, p in own.items():
                if p.shape != self.state[name].shape:
                    raise UserError(f"the prior {self.path} does not fit this avatar ({name}: "
                                    f"{tuple(self.state[name].shape)} vs {tuple(p.shape)}).")
                p.copy_(self.state[name].to(p.device, p.dtype))
            avatar.log_beta.fill_(self.log_beta)
            code = getattr(avatar.sdf, "code", None)
            if code is not None and "video_code" in self.info:  # a new video starts at the mean code
                code.copy_(torch.as_tensor(self.info["video_code"], dtype=code.dtype))

    def fit_config(self, cfg: RefineConfig, mode: str) -> RefineConfig:
        """The configuration of a fit that starts from this prior: the prior's field settings, all hash
        levels from the start (coarse-to-fine would hide the prior's detail); `inference` keeps the shared
        fields fixed."""
        if mode not in choices(PriorMode):
            raise UserError(f"--mode must be {one_of(choices(PriorMode))} (got {mode!r}).")
        arch = {k: getattr(self.config, k) for k in ARCHITECTURE}
        return replace(cfg, **arch, coarse_to_fine=0.0, freeze_shared=(mode == "inference"))


def save_prior(out_dir: str | Path, shared: dict[str, torch.Tensor], cfg: RefineConfig, body_model: str,
               info: dict) -> Path:
    """Writes PRIOR_DIR/prior.pt (shared weights by avatar parameter name) and prior.json, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().cpu().clone() for n, p in shared.items()}
    info = {"body_model": body_model, "preset": cfg.preset, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    torchfile.save(out / PRIOR_FILE, FORMAT, VERSION, {**info, "config": cfg.to_dict(), "state": state})
    atomic.write_json(out / INFO_FILE, {"format": FORMAT, "version": VERSION, **info})
    return out / PRIOR_FILE


def load_prior(path: str | Path) -> Prior:
    """Loads PRIOR_DIR (or PRIOR_DIR/prior.pt) with weights_only=True.

    Raises:
        UserError: missing, unreadable, not a prior, or from another version.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / PRIOR_FILE
    if not p.is_file():
        raise UserError(f"no prior at {path} (expected a folder with {PRIOR_FILE}, made by `prior train`).")
    data = torchfile.load(p, FORMAT, VERSION, what="prior", kind="an avatar prior",
                          remedy="train it again with `prior train`")
    info = {k: v for k, v in data.items() if k not in ("state", "config")}
    return Prior(p, data["state"], RefineConfig.from_dict(data["config"]), data["body_model"],
                 float(data["log_beta"]), info)
