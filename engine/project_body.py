"""The body a project carries (PROJECT/body_model.npz): the fitted shape's body model as arrays
(engine/body/baked.py) and its canonical SDF grid, written by preprocessing and `synth`.

Fitting, export, scoring and rendering read the body from here, so a machine with only torch, numpy,
scipy and scikit-image (a GPU node) can run them: no Anny, SMPL files or open3d. A project made before
this file existed gains it on first use where the body model is installed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from engine.body import BodyConfig, BodyModel, create_body_model
from engine.body.baked import BakedBody, bake_body
from engine.errors import UserError
from engine.fields.body_sdf import BodySDFGrid
from engine.io import atomic
from engine.project import Project

log = logging.getLogger(__name__)

BODY_MODEL_FILE = "body_model.npz"
_SDF_KEYS = ("volume", "lo", "hi")


@dataclass
class ProjectBody:
    """The body model of one project at its fitted shape, and the naked body's canonical SDF."""

    model: BakedBody
    sdf: BodySDFGrid


def write_project_body(project: Project, model: BodyModel, shape: torch.Tensor) -> ProjectBody:
    """Stores `model` at `shape` in the project (atomically) and returns what was stored."""
    arrays = bake_body(model, shape)
    baked = BakedBody(arrays)
    sdf = BodySDFGrid(baked.canonical_vertices(baked.shape).numpy(), baked.faces)
    state = sdf.state_dict()
    atomic.save_npz(project.root / BODY_MODEL_FILE, **arrays,
                    **{f"sdf_{k}": state[k].cpu().numpy() for k in _SDF_KEYS})
    return ProjectBody(baked, sdf)


def load_project_body(project: Project, body_model_dir: str | None = None) -> ProjectBody:
    """The project's body; made now (and stored) for a project without one or whose shape changed,
    which needs the body model installed.

    Raises:
        UserError: it has to be made and the body model (or open3d, for the SDF grid) is not installed.
    """
    shape = project.body().shape
    path = project.root / BODY_MODEL_FILE
    if path.exists():
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        if str(arrays["model"]) == project.body_model and np.allclose(arrays["shape"], shape.numpy(), atol=1e-6):
            sdf = BodySDFGrid.from_state({k: torch.as_tensor(arrays[f"sdf_{k}"]) for k in _SDF_KEYS})
            return ProjectBody(BakedBody(arrays), sdf)
        log.info("%s was stored for another body; making it again", path)
    try:
        model = create_body_model(BodyConfig(project.body_model, body_model_dir))
        log.info("storing the %s body model in %s (one time only)", model.name, path)
        return write_project_body(project, model, shape)
    except ImportError as e:
        raise UserError(
            f"{project.root} has no usable {BODY_MODEL_FILE} (it was made by an older version, or its body "
            f"changed), and making one needs the desktop install ({e.name or e} is missing). Where Avatar "
            "Studio is fully installed, run a command on the project once (`python main.py eval PROJECT "
            "--no-textured`) or preprocess again, then copy it here.") from None
