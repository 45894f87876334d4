"""Body models behind one interface (`BodyModel`): Anny (default), SMPL and SMPL-X."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

from engine.body.anny_model import AnnyBody
from engine.body.base import KEYPOINT_NAMES, BodyModel, BodyParams
from engine.body.smpl_model import SmplBody
from engine.errors import UserError

BodyModelName = Literal["anny", "smpl", "smplx"]
BODY_MODELS: tuple[str, ...] = get_args(BodyModelName)


@dataclass(frozen=True)
class BodyConfig:
    """Which body model to use."""

    model: BodyModelName = "anny"
    """Body model: anny (built in), smpl or smplx (needs --body-model-dir)."""
    model_dir: str | None = None
    """Folder with the SMPL/SMPL-X model files (for smpl / smplx only)."""


@lru_cache(maxsize=4)
def create_body_model(config: BodyConfig = BodyConfig()) -> BodyModel:
    """Builds (and caches) the body model a config names."""
    if config.model == "anny":
        return AnnyBody()
    if config.model in ("smpl", "smplx"):
        return SmplBody(config.model, config.model_dir)
    raise UserError(f"Unknown body model {config.model!r}; choose one of {', '.join(BODY_MODELS)}.")


__all__ = ["BODY_MODELS", "BodyModelName", "KEYPOINT_NAMES", "BodyConfig", "BodyModel", "BodyParams", "create_body_model"]
