"""The seed thesis's geometry-encoding network, as a fit option."""

from __future__ import annotations

import shutil

import numpy as np
import torch

from engine.fields.geometry_encoder import GeometryEncoder
from engine.jobs import Losses
from engine.refine.config import load_preset
from engine.refine.loop import FitBudget, fit_job
from engine.refine.prior_file import is_shared
from engine.refine.session import open_session


def test_features_are_pixel_aligned():
    enc = GeometryEncoder()
    image = torch.zeros(40, 60, 3)
    image[10:20, 30:40] = 1.0  # a bright square: features differ there
    fmap = enc.encode(image)
    assert fmap.shape == (1, 16, 40, 60)
    inside, outside = fmap[0, :, 15, 35], fmap[0, :, 35, 5]
    assert (inside - outside).abs().max() > 1e-3


def test_fit_with_geometry_encoder_trains_it_with_the_morphing_loss(small_scene, tmp_path):
    proj = tmp_path / "project"
    shutil.copytree(small_scene / "project", proj)
    cfg = load_preset("fast", geometry_encoder=True, morph_loss="v1", w_morph=0.01)
    start = open_session(proj, cfg).avatar.encoder.state_dict()
    losses = [ev.values for ev in fit_job(proj, cfg, FitBudget(iters=6, preview_every=0)) if isinstance(ev, Losses)]
    assert len(losses) == 6 and all(np.isfinite(v["total"]) for v in losses)
    # The displacement head starts at zero (so does the loss), then moves.
    assert losses[0].get("morph", 0.0) == 0.0 and any(v.get("morph", 0) > 0 for v in losses[1:])
    s = open_session(proj)
    assert s.cfg.geometry_encoder and s.cfg.morph_loss == "v1"
    moved = [k for k, v in s.avatar.encoder.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.startswith("unet.") for k in moved) and any(k.startswith("mlp.") for k in moved)
    r = s.render_frame(s.project.held_out[0])
    assert np.isfinite(r["rgb"]).all() and r["opacity"].max() > 0.5
    # It is part of the fields a prior shares.
    assert all(is_shared(n, s.cfg.prior_shares) for n, _ in s.avatar.named_parameters() if n.startswith("encoder."))
