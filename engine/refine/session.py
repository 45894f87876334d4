"""Everything built from a project for refining, rendering, meshing and evaluating an avatar."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from engine.body import BodyModel, BodyParams
from engine.errors import UserError
from engine.fields.body_sdf import BodySDFGrid
from engine.geometry.camera import Camera, pixel_rays, project
from engine.mesh import Mesh, color_mesh, extract_mesh, pose_mesh, skinning_weights
from engine.project import Project
from engine.project_body import load_project_body
from engine.refine.avatar import Avatar
from engine.refine.checkpoint import checkpoint_path, load_checkpoint
from engine.refine.config import RefineConfig
from engine.refine.deformer import Deformer, FramePose
from engine.refine.losses import composite, image_losses
from engine.refine.prior_file import load_prior
from engine.refine.raymarch import render_rays
from engine.refine.render import TRAIN_MARGIN_PX, box_pixels, person_box, render_frame, world_normals
from engine.settings import Device, choices, one_of

log = logging.getLogger(__name__)

# Meshes are cut at SDF = this many β, not at 0. VolSDF's density is (1/β)·Laplace-CDF(-sdf/β), so a ray
# passing at distance s outside a limb of radius r still gathers exp(-s/β)·sqrt(πr/2β) optical depth:
# the render's silhouette (opacity 0.5), which training fits to the person mask, lies about 1.5–2.5 β
# outside the zero level set. Cut at 0, the mesh is thinner than the avatar that was rendered (and than
# the person); the factor is the measured best match (README, "Meshes agree with the render").
SURFACE_LEVEL_BETAS = 1.5


def resolve_device(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available to this PyTorch build; use --device cpu.")
        return torch.device("cuda")
    if name not in choices(Device):
        raise UserError(f"--device must be {one_of(choices(Device))} (got {name!r}).")
    return torch.device("cpu")


def median_background(project: Project, frames: list[int], max_frames: int = 40) -> np.ndarray:
    """Per-pixel median of unmasked pixels over frames, [H, W, 3] (grey where never seen)."""
    pick = frames[:: max(1, len(frames) // max_frames)]
    stack = np.stack([project.frame(i) for i in pick])
    masks = np.stack([project.mask(i) for i in pick])
    stack[masks] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: never seen
        bg = np.nanmedian(stack, axis=0)
    return np.nan_to_num(bg, nan=0.5).astype(np.float32)


@dataclass
class Session:
    project: Project
    cfg: RefineConfig
    body: BodyModel
    params: BodyParams
    deformer: Deformer
    avatar: Avatar
    cameras: list[Camera]
    device: torch.device
    step: int = 0
    checkpoint: dict | None = None
    held_out_start: Literal["auto", "own pose", "interpolation"] = "auto"  # see `base_params`
    _held_out_start: dict = field(default_factory=dict)  # (frame, step) → index of the chosen start

    def fit_frame_pose(self, i: int, steps: int = 40, rays: int = 1024, lr: float = 5e-3) -> None:
        """Test-time fit of one held-out frame's body (pose and translation refinement on top of the
        trajectory of its refined neighbours; the avatar is frozen), from that frame's pixels. Used to
        score held-out frames, which the avatar never saw."""
        cfg, av = self.cfg, self.avatar
        base = self.base_params(i)
        d_pose = torch.zeros(len(self.deformer.pose_bones), 3, device=self.device, requires_grad=True)
        d_tr = torch.zeros(3, device=self.device, requires_grad=True)
        opt = torch.optim.Adam([d_pose, d_tr], lr=lr)
        cam = self.cameras[i]
        image = torch.as_tensor(self.project.frame(i), device=self.device)
        mask = torch.as_tensor(self.project.mask(i), device=self.device).float()
        lo, hi = person_box(cam, self.deformer.frame(i, base=base).vertices, margin_px=TRAIN_MARGIN_PX)
        with torch.no_grad():
            enc = self._with_encoding(self.deformer.frame(i, base=base), image)
        gen = torch.Generator(device=self.device).manual_seed(i)
        frozen = [p for p in av.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            for s in range(steps):
                for grp in opt.param_groups:
                    grp["lr"] = lr * 0.1 ** (s / steps)
                pt = box_pixels(cam, lo, hi, rays, gen)  # on the device, as in training
                o, d = pixel_rays(cam, pt, self.device)
                fp = replace(self.deformer.frame(i, d_pose, self._in_image_plane(i, d_tr), base=base),
                             features=enc.features, camera=enc.camera)
                out = render_rays(av, self.deformer, fp, o, d, cfg.coarse_samples, cfg.fine_samples, cfg.sampler,
                                  cfg.shell)
                terms = image_losses(cfg, out, composite(av, out, pt), image[pt[:, 1], pt[:, 0]],
                                     mask[pt[:, 1], pt[:, 0]], terms=("rgb", "mask"))
                loss = sum(terms.values())
                opt.zero_grad()
                loss.backward()
                opt.step()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        with torch.no_grad():
            av.pose_delta.weight[i] = d_pose.detach().reshape(-1).to(self.device)
            av.transl_delta.weight[i] = d_tr.detach().to(self.device)

    def reload_checkpoint(self) -> bool:
        """Loads the project's checkpoint into this session when it is newer than the session (a run in
        another thread writes it); returns whether the session changed. Raises `UserError` when the checkpoint
        was made with another configuration (its fields would not fit: open a new session instead)."""
        path = checkpoint_path(self.project.root)
        if not path.exists():
            return False
        state = load_checkpoint(path, body_model=self.project.body_model, num_frames=self.project.num_frames)
        if int(state["step"]) <= self.step:
            return False
        if RefineConfig.from_dict(state["config"]) != self.cfg:
            raise UserError(f"{path} was made with another configuration; open the project again.")
        self.avatar.load_state_dict(state["model"])
        self.step, self.checkpoint = int(state["step"]), state
        return True

    # ---- per-frame body ---------------------------------------------------------------------
    def refined_params(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pose [J, 3], orientation [3] and translation [3] of training frame i with its refinements
        (no gradients)."""
        with torch.no_grad():
            pose, orient, transl = self.deformer.base(i)
            d_pose, d_tr = self.avatar.frame_deltas(i)
            pose = pose.index_add(0, self.deformer.pose_bone_index, d_pose.to(pose))
            return pose, orient, transl + self._in_image_plane(i, d_tr.to(transl))

    def base_params(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a frame's refinements apply to. Training frames: their stored body. Held-out frames: of
        two candidates, the one whose body explains the frame's mask and keypoints better:
        - the interpolation of the refined training neighbours (right when the fitted poses' errors are
          independent per frame: the neighbours' refinements have removed them);
        - the frame's own fitted pose plus the neighbours' refinement (right when the neighbours are far
          apart in time, as in a sparsely sampled real clip, where interpolated arms are somewhere else).
        `held_out_start` forces one of them ("own pose" or "interpolation"; for comparisons).
        """
        train = self.project.train_frames
        if not train or i in train:
            return self.deformer.base(i)
        lo = max((f for f in train if f < i), default=None)
        hi = min((f for f in train if f > i), default=None)
        near = [f for f in (lo, hi) if f is not None]
        w = [1.0] if len(near) == 1 else [(hi - i) / (hi - lo), (i - lo) / (hi - lo)]

        def delta(f: int) -> tuple[torch.Tensor, torch.Tensor]:
            (r_pose, _, r_tr), (b_pose, _, b_tr) = self.refined_params(f), self.deformer.base(f)
            return r_pose - b_pose, r_tr - b_tr

        d_pose = sum(wk * delta(f)[0] for wk, f in zip(w, near))
        d_tr = sum(wk * delta(f)[1] for wk, f in zip(w, near))
        pose, orient, transl = self.deformer.base(i)
        candidates = [(pose + d_pose, orient, transl + d_tr)]
        if len(near) == 2:  # small angles: axis-angles blend linearly
            candidates.append(tuple(w[0] * x + w[1] * y for x, y in zip(self.refined_params(lo), self.refined_params(hi))))
        if len(candidates) == 1 or self.held_out_start != "auto":
            return candidates[-1 if self.held_out_start == "interpolation" else 0]
        key = (i, self.step)
        if key not in self._held_out_start:
            costs = [self._pose_cost(i, c) for c in candidates]
            self._held_out_start[key] = int(np.argmin(costs))
            log.debug("held-out frame %d starts from %s (costs %s)", i,
                      ("its own pose", "the interpolation")[self._held_out_start[key]], np.round(costs, 3))
        return candidates[self._held_out_start[key]]

    def _pose_cost(self, i: int, base: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
        """How badly a body explains frame i: 1 - silhouette IoU with the mask, plus the mean distance of
        its projected keypoints to the detected ones (confidence ≥ 0.5) in person heights."""
        from engine.render.raycast import render_mesh  # open3d: only held-out frames need it

        pose, orient, transl = (t.cpu() for t in base)
        p = BodyParams(self.params.shape, pose[None], orient[None], transl[None])
        with torch.no_grad():
            _, verts = self.body.posed(p, rest=self.deformer.rest)
        v = verts[0].numpy()
        cam = self.cameras[i]
        sil = render_mesh(v, self.body.faces, np.ones((len(v), 3), np.float32), cam, supersample=1).mask
        mask = self.project.mask(i)
        cost = 1.0 - float((sil & mask).sum()) / max(float((sil | mask).sum()), 1.0)
        kp = self.project.keypoints()
        if kp is not None:
            ok = kp[i, :, 2] >= 0.5
            if ok.sum() >= 4:
                with torch.no_grad():
                    model_kp = project(self.body.keypoints(verts)[0].numpy(), cam)
                height = max(float(np.ptp(kp[i, ok, 1])), 1.0)
                cost += float(np.linalg.norm(model_kp[ok] - kp[i, ok, :2], axis=1).mean()) / height
        return cost

    def frame_pose(self, i: int, image: torch.Tensor | None = None) -> FramePose:
        """The refined body of frame i (held-out frames: their neighbours' trajectory, plus their own
        test-time refinement once `fit_frame_pose` ran); with the geometry encoder, also the frame's
        features (from `image` [H, W, 3] on the device, read from the project when not given)."""
        d_pose, d_tr = self.avatar.frame_deltas(i)
        fp = self.deformer.frame(i, d_pose, self._in_image_plane(i, d_tr), base=self.base_params(i))
        return self._with_encoding(fp, image)

    def _with_encoding(self, fp: FramePose, image: torch.Tensor | None = None) -> FramePose:
        if self.avatar.encoder is None:
            return fp
        if image is None:
            image = torch.as_tensor(self.project.frame(fp.index), device=self.device)
        return replace(fp, features=self.avatar.encoder.encode(image), camera=self.cameras[fp.index])

    def _in_image_plane(self, i: int, d_tr: torch.Tensor) -> torch.Tensor:
        """Drops the part of a translation refinement along the camera's axis: moving toward the
        camera would let the body grow in the image instead of the clothes being learned."""
        z = torch.as_tensor(self.cameras[i].R[2], dtype=d_tr.dtype, device=d_tr.device)
        return d_tr - (d_tr @ z) * z

    # ---- rendering --------------------------------------------------------------------------
    def render_frame(self, i: int, stride: int = 1, fill: bool = True, normals: bool = True, **kw) -> dict:
        """Frame i of the avatar as it stands (engine/refine/render.py `render_frame`: stride, fill,
        normals, chunk and sample counts)."""
        return render_frame(self.avatar, self.deformer, self.frame_pose(i), self.cameras[i], self.cfg,
                            stride=stride, fill=fill, normals=normals, **kw)

    def world_normals(self, x: torch.Tensor, fp: FramePose, h: float = 0.004) -> torch.Tensor:
        """Unit normals of the posed surface at world points [P, 3] (central differences)."""
        return world_normals(self.avatar, self.deformer, fp, x, h)

    # ---- meshes -----------------------------------------------------------------------------
    def surface_level(self) -> float:
        """The SDF level whose surface is the one the volume render shows (`SURFACE_LEVEL_BETAS`)."""
        return SURFACE_LEVEL_BETAS * float(self.avatar.beta.detach())

    @torch.no_grad()
    def canonical_mesh(self, resolution: int = 256) -> Mesh:
        """Marching cubes of the canonical SDF at `surface_level` over the occupied region (largest
        component), coloured by the colour field."""
        occ = self.avatar.occupancy
        dev = self.device
        level = self.surface_level()

        def sdf_fn(p: np.ndarray) -> np.ndarray:
            return self.avatar.sdf(torch.as_tensor(p, device=dev))[0].cpu().numpy() - level

        def band_fn(p: np.ndarray) -> np.ndarray:
            # Only occupied cells can hold the surface; the rest is empty space (positive).
            return np.where(occ.contains(torch.as_tensor(p, device=dev)).cpu().numpy(), 0.0, 1.0).astype(np.float32)

        def color_fn(p: np.ndarray) -> np.ndarray:
            x = torch.as_tensor(p, dtype=torch.float32, device=dev)
            return self.avatar.rgb(x, self.avatar.sdf(x)[1]).cpu().numpy()

        lo, hi = (b.cpu().numpy() + d * float(occ.voxel) for b, d in zip(occ.bounds(), (-1, 1)))
        mesh = extract_mesh(sdf_fn, lo, hi, resolution=resolution, band_fn=band_fn, band=0.5)
        return color_mesh(mesh, color_fn)

    @torch.no_grad()
    def posed_mesh(self, canonical: Mesh, i: int, weights: torch.Tensor | None = None) -> Mesh:
        """A canonical mesh of this avatar posed into frame i with its refined body (`weights`: the mesh's
        `skinning_weights`, when posing it into many frames)."""
        fp = self.frame_pose(i)
        return pose_mesh(canonical, self.body, self.params.shape, fp.transforms.detach().cpu(),
                         self.deformer.canonical_vertices, weights)

    def mesh_weights(self, canonical: Mesh) -> torch.Tensor:
        """The skinning weights `posed_mesh` gives a canonical mesh's vertices."""
        return skinning_weights(canonical.vertices, self.body, self.deformer.canonical_vertices)


def open_session(project_dir: str | Path, cfg: RefineConfig | None = None, device: str = "cpu",
                 body_model_dir: str | None = None, require_checkpoint: bool = False,
                 prior: str | Path | None = None, prior_mode: str = "refine", use_checkpoint: bool = True) -> Session:
    """Opens a project for refinement; restores the checkpoint (and its config) when there is one.
    Without one, `prior` (a `prior train` folder) gives the starting human fields; `prior_mode`
    inference keeps them fixed."""
    project = Project.open(project_dir)
    dev = resolve_device(device)
    project_body = load_project_body(project, body_model_dir)
    body = project_body.model
    params = project.body()
    if params.pose.shape[1] != body.num_bones:
        raise UserError(f"{project.root}/body.npz does not match the {body.name} body model.")
    ck_path = checkpoint_path(project.root)
    state = None
    if use_checkpoint and ck_path.exists():
        state = load_checkpoint(ck_path, body_model=project.body_model, num_frames=project.num_frames)
        saved = RefineConfig.from_dict(state["config"])
        if cfg is not None and cfg.preset != saved.preset:
            log.warning("the project's checkpoint uses preset %s; resuming with it (delete checkpoints/ to change)",
                        saved.preset)
        cfg = saved
        if prior is not None:
            log.warning("the project already has a fitted avatar: resuming it (the prior only sets the starting "
                        "point of a new fit; delete checkpoints/ to start over from the prior)")
            prior = None
    elif require_checkpoint:
        raise UserError(f"{project.root} has no fitted avatar yet (no checkpoints/last.pt); run `fit` first.")
    cfg = cfg or RefineConfig()
    loaded_prior = None
    if prior is not None:
        loaded_prior = load_prior(prior)
        loaded_prior.check_compatible(cfg, project.body_model)
        cfg = loaded_prior.fit_config(cfg, prior_mode)
    cfg.validate()
    deformer = Deformer(body, params, dev)
    if state is not None:
        grid = BodySDFGrid.from_state({k[len("sdf.body."):]: v for k, v in state["model"].items()
                                       if k.startswith("sdf.body.")})
        bg = np.zeros((project.meta["height"], project.meta["width"], 3), np.float32) + 0.5
    else:
        grid = project_body.sdf
        bg = median_background(project, project.train_frames or list(range(project.num_frames)))
    torch.manual_seed(cfg.seed)
    avatar = Avatar(cfg, grid, project.num_frames, len(deformer.pose_bones), bg).to(dev)
    step = 0
    if state is not None:
        avatar.load_state_dict(state["model"])
        step = int(state["step"])
    elif loaded_prior is not None:
        loaded_prior.apply(avatar)
        log.info("human fields start from the prior %s (%s)", loaded_prior.path, prior_mode)
    return Session(project, cfg, body, params, deformer, avatar, project.cameras(), dev, step, state)
