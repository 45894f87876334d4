"""`prior train`: the human fields trained over many videos, as a job yielding events.

Every video is a project (preprocessed or synthetic). The canonical SDF residual and colour field are
shared; each video keeps its own background, density scale and per-frame pose refinements, saved in
PRIOR_DIR/training/videos/ after each visit and reloaded when it is revisited. Training goes in rounds:
each round visits every video once for the same budget (steps or seconds), so long and short videos
weigh the same. Under torchrun each rank visits different videos and the shared weights (and their Adam
moments) are averaged after every visit, so all ranks hold the same bytes. After every round the prior
(PRIOR_DIR/prior.pt) and the resume state (PRIOR_DIR/training/state.pt) are written atomically: a killed
run restarted with the same command continues from the last complete round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.evaluation import live_frames, live_scores
from engine.io import atomic, torchfile
from engine.jobs.events import CancelToken, Done, Event, Log, Progress
from engine.prior import distributed
from engine.project import Project
from engine.refine.config import MorphLoss, Preset, PriorShares, load_preset
from engine.refine.prior_file import is_shared, save_prior, shared_parameters, tie_shared
from engine.refine.session import Session, open_session
from engine.refine.steps import Optimizers, StepDriver, TrainData, adam, random_streams
from engine.settings import check_choices

log = logging.getLogger(__name__)

STATE_FORMAT = "avatar-prior-training"
STATE_VERSION = 1
TRAINING_DIR = "training"
LOG_FILE = "log.jsonl"


@dataclass(frozen=True)
class PriorConfig:
    """How a prior is trained."""

    rounds: int = 20
    """Rounds; each visits every video once."""
    visit_steps: int = 100
    """Steps per visit of a video (ignored when visit_seconds is set)."""
    visit_seconds: float = 0.0
    """If > 0, each visit lasts this many seconds instead of a number of steps."""
    eval_every: int = 1
    """Score each video's held-out frame every this many rounds (0: never)."""
    preset: Preset = "fast"
    """Refinement preset whose fields and losses are trained."""
    seed: int = 0
    """Random seed."""
    timeout_s: float = 1800.0
    """How long a process waits for the others at a synchronisation point before giving up."""
    geometry_encoder: bool = False
    """Train the seed thesis's geometry encoder too (shared across videos)."""
    morph_factor: float = 0.5
    """Morphing factor μ of the geometry encoder."""
    morph_loss: MorphLoss = "v2"
    """Morphing loss: v1 (sum of displacement norms) or v2 (mean)."""
    w_morph: float = 0.01
    """Weight of the morphing loss."""
    video_code_dim: int = 16
    """Size of each video's latent code (0: none; the shared fields must then fit every video alike)."""
    shares: PriorShares = "geometry"
    """What the prior shares: geometry (each video keeps its own colour field) or all (colour too)."""

    def validate(self) -> None:
        if self.rounds < 1:
            raise UserError(f"--rounds must be at least 1 (got {self.rounds}).")
        if self.visit_steps < 1 and self.visit_seconds <= 0:
            raise UserError("a visit needs --visit-steps ≥ 1 or --visit-seconds > 0.")
        if self.eval_every < 0:
            raise UserError("--eval-every must be 0 or more.")
        check_choices(self)


@dataclass
class _Video:
    key: str
    index: int
    session: Session
    opt: Optimizers
    driver: StepDriver


def _keys(dirs: list[Path]) -> list[str]:
    """One name per video for logs and state files (a folder called `project` is named by its parent,
    as in the synthetic scenes' layout)."""
    return [f"{k:02d}-{d.parent.name if d.name == 'project' else d.name}" for k, d in enumerate(dirs)]


def check_projects(project_dirs: list[str | Path]) -> tuple[list[Path], str]:
    """Opens every project (cheap) and checks they can train one prior; returns (dirs, body model).

    Raises:
        UserError: a folder that is not a preprocessed project, too few frames, or mixed body models.
    """
    if not project_dirs:
        raise UserError("give at least one project folder to train a prior on.")
    dirs, models = [], {}
    for d in project_dirs:
        p = Project.open(d)  # a UserError for anything that is not a finished (preprocessed) project
        if len(p.train_frames) < 2:
            raise UserError(f"{p.root} has fewer than 2 training frames.")
        dirs.append(p.root.resolve())
        models[str(p.root)] = p.body_model
    if len(set(dirs)) != len(dirs):
        raise UserError("the same project is listed twice.")
    if len(set(models.values())) > 1:
        listing = ", ".join(f"{Path(k).name}: {v}" for k, v in models.items())
        raise UserError(f"the projects use different body models ({listing}); one prior needs one body model.")
    return dirs, next(iter(models.values()))


def _shared_tensors(shared: dict, opt: torch.optim.Adam) -> list[torch.Tensor]:
    """The shared weights and their Adam moments: what is averaged across ranks."""
    out = list(shared.values())
    for p in shared.values():
        st = opt.state[p]
        out += [st["exp_avg"], st["exp_avg_sq"]]
    return out


def _init_adam_state(opt: torch.optim.Adam) -> None:
    """Creates the moments now (a zero-gradient step moves nothing), so every rank has the same tensors
    to average from the first visit on."""
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def digest(shared: dict) -> str:
    """sha256 of the shared weights' bytes (equal on every rank after each average)."""
    h = hashlib.sha256()
    for name in sorted(shared):
        h.update(name.encode())
        h.update(shared[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _save_torch(path: Path, obj: dict) -> None:
    torchfile.save(path, STATE_FORMAT, STATE_VERSION, obj)


def _load_torch(path: Path, what: str) -> dict:
    return torchfile.load(path, STATE_FORMAT, STATE_VERSION, what=what, kind=f"prior {what}",
                          remedy="train again with --restart")


def _read_state(out: Path, keys: list[str], cfg_dict: dict, restart: bool) -> dict | None:
    """The resume state, if this folder holds a compatible training run."""
    tdir = out / TRAINING_DIR
    path = tdir / "state.pt"
    if restart:
        return None
    if not path.exists():
        return None
    state = _load_torch(path, "training state")
    if state["videos"] != keys:
        raise UserError(f"{out} holds the training of other videos ({', '.join(state['videos'])}); "
                        "give the same projects in the same order, another --out, or --restart.")
    if state["config"] != cfg_dict:
        raise UserError(f"{out} holds a training run with other settings; use the same options, another --out, "
                        "or --restart.")
    return state


def prior_train_job(project_dirs: list[str | Path], out_dir: str | Path, config: PriorConfig = PriorConfig(),
                    device: str = "cpu", body_model_dir: str | None = None, restart: bool = False,
                    cancel: CancelToken | None = None) -> Iterator[Event]:
    """Trains (or resumes training) a prior over the projects; writes only into out_dir."""
    cancel = cancel or CancelToken()
    config.validate()
    dirs, body_model = check_projects(project_dirs)
    keys = _keys(dirs)
    out = Path(out_dir).expanduser().resolve()
    if out in dirs or any(out.is_relative_to(d) for d in dirs):
        raise UserError("--out must not be inside a project.")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder.")
    cfg = load_preset(config.preset, seed=config.seed, geometry_encoder=config.geometry_encoder,
                      morph_factor=config.morph_factor, morph_loss=config.morph_loss, w_morph=config.w_morph,
                      video_code_dim=config.video_code_dim, prior_shares=config.shares)
    # What a resumed run must share with the saved one (rounds, visit budgets and evaluation may change).
    cfg_dict = {"refine": cfg.to_dict()}
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    if world_env > len(dirs):
        raise UserError(f"{world_env} processes for {len(dirs)} videos: each process needs at least one video.")
    state = _read_state(out, keys, cfg_dict, restart)

    rank, world = distributed.init(device, config.timeout_s)
    tdir = out / TRAINING_DIR
    vdir = tdir / "videos"
    if rank == 0:
        if restart and tdir.exists():
            shutil.rmtree(tdir)
        vdir.mkdir(parents=True, exist_ok=True)
    distributed.gather(None)  # the folder exists before anyone writes into it
    vdir.mkdir(parents=True, exist_ok=True)

    mine = list(range(rank, len(dirs), world))
    yield Log(f"rank {rank}/{world}: videos {', '.join(keys[i] for i in mine)}")
    sessions = []
    for i in mine:
        cancel.check()
        yield Progress("open videos", len(sessions), len(mine))
        sessions.append(open_session(dirs[i], cfg, device, body_model_dir, use_checkpoint=False))
    yield Progress("open videos", len(mine), len(mine))
    avatars = [s.avatar for s in sessions]
    tie_shared(avatars)
    shared = shared_parameters(avatars[0])
    shared_opt = adam(list(shared.values()), cfg)
    _init_adam_state(shared_opt)
    round0 = 0
    if state is not None:
        with torch.no_grad():
            for n, p in shared.items():
                p.copy_(state["shared"][n])
        shared_opt.load_state_dict(state["shared_optimizer"])
        round0 = int(state["round"])
    # Same start on every rank (rank 0's init or resumed weights).
    distributed.broadcast_(_shared_tensors(shared, shared_opt))

    videos = []
    for i, s in zip(mine, sessions):
        own = [p for n, p in s.avatar.named_parameters()
               if p.requires_grad and not is_shared(n, cfg.prior_shares) and not n.startswith(("pose_delta", "transl_delta"))]
        own = Optimizers.for_avatar(s.avatar, cfg, own)
        own_opt, body_opt = own.field_opts[0], own.body
        opt = Optimizers([shared_opt, own_opt], body_opt)
        driver = StepDriver(s, opt, TrainData.of(s), opt.base_lrs(cfg), *random_streams(config.seed, i * 1009, s.device))
        v = _Video(keys[i], i, s, opt, driver)
        vf = vdir / f"{v.key}.pt"
        if state is not None and vf.exists():
            vs = _load_torch(vf, "video state")
            s.avatar.load_state_dict(vs["model"], strict=False)
            own_opt.load_state_dict(vs["own_optimizer"])
            if body_opt is not None and vs.get("body_optimizer") is not None:
                body_opt.load_state_dict(vs["body_optimizer"])
            s.step = int(vs["step"])
        videos.append(v)
    if round0 >= config.rounds:
        yield Log(f"{out} already holds all {config.rounds} rounds; nothing to do (raise --rounds to go on).")
    elif round0:
        yield Log(f"resuming after round {round0} of {config.rounds}")

    slots = math.ceil(len(dirs) / world)
    total = (config.rounds - round0) * len(videos) * (config.visit_steps if config.visit_seconds <= 0 else 1)
    done_steps, t_start = 0, time.perf_counter()
    compute_total, sync_total, last_stats = 0.0, 0.0, []
    history = []
    if rank == 0 and (out / LOG_FILE).exists() and state is not None:
        history = [json.loads(x) for x in (out / LOG_FILE).read_text().splitlines() if x.strip()]
        history = [h for h in history if h["round"] <= round0]
    try:
        for rnd in range(round0, config.rounds):
            rows, compute_s, sync_s, steps_round = [], 0.0, 0.0, 0
            for slot in range(slots):
                k = slot * world + rank
                v = videos[slot] if k < len(dirs) else None
                if v is not None:
                    row = yield from _visit(v, config, rnd, cancel, done_steps, total)
                    done_steps += row["steps"]
                    steps_round += row["steps"]
                    compute_s += row["seconds"]
                    _save_video(vdir / f"{v.key}.pt", v, rnd)
                    rows.append(row)
                ts = time.perf_counter()
                distributed.average_(_shared_tensors(shared, shared_opt), 1.0 if v is not None else 0.0)
                adam_steps = torch.stack([shared_opt.state[p]["step"] for p in shared.values()])
                distributed.maximum_(adam_steps)
                for p, st in zip(shared.values(), adam_steps):
                    shared_opt.state[p]["step"].copy_(st)
                sync_s += time.perf_counter() - ts
            compute_total += compute_s
            sync_total += sync_s
            stats = {"rank": rank, "rows": rows, "compute_s": compute_s, "sync_s": sync_s, "steps": steps_round,
                     "run_steps": done_steps, "run_compute_s": round(compute_total, 2),
                     "run_sync_s": round(sync_total, 2),
                     "log_beta": [float(v.session.avatar.log_beta.detach()) for v in videos], "digest": digest(shared),
                     "codes": [v.session.avatar.sdf.code.detach().tolist() for v in videos
                               if getattr(v.session.avatar.sdf, "code", None) is not None]}
            everyone = distributed.gather(stats)
            last_stats = [{k: v for k, v in st.items() if k != "rows"} for st in everyone]
            if rank == 0:
                all_rows = sorted((r for s in everyone for r in s["rows"]), key=lambda r: r["video"])
                history += all_rows
                yield from _round_report(rnd, config.rounds, everyone, all_rows)
                _write_outputs(out, shared, shared_opt, cfg, cfg_dict, keys, body_model, rnd + 1, everyone, history)
    except distributed.RankLost as e:
        raise distributed.RankLost(f"{e}. {out} keeps the last complete round: run the same command again to "
                                   "resume.") from e
    finally:
        distributed.shutdown()
    seconds = time.perf_counter() - t_start
    d = digest(shared)
    yield Log(f"rank {rank}: shared weights sha256 {d}")
    summary = {"prior": str(out), "rank": rank, "world": world, "rounds": config.rounds, "steps": done_steps,
               "seconds": round(seconds, 1), "steps_per_s": round(done_steps / max(seconds, 1e-9), 2),
               "ms_per_step": round(1000 * compute_total / max(done_steps, 1), 1), "sync_s": round(sync_total, 2),
               "digest": d}
    if rank == 0:
        # Throughput of the whole run over all ranks (each rank's own numbers as of the last round).
        all_steps = sum(st["run_steps"] for st in last_stats)
        atomic.write_json(tdir / "summary.json", {**summary, "all_steps": all_steps,
                                                  "all_steps_per_s": round(all_steps / max(seconds, 1e-9), 2),
                                                  "ranks": last_stats})
    yield Done(summary)


def _visit(v: _Video, config: PriorConfig, rnd: int, cancel: CancelToken, done0: int,
           total: int) -> Iterator[Event]:
    """Trains one video for one visit; returns its log row."""
    s = v.session
    v.driver.gen, v.driver.rng = random_streams(config.seed, v.index * 1009 + rnd, s.device)
    v.driver.mark_good()
    n = config.visit_steps
    sums: dict[str, float] = {}
    steps = 0
    t0 = time.perf_counter()
    while True:
        if config.visit_seconds > 0:
            frac = (time.perf_counter() - t0) / config.visit_seconds
        else:
            frac = steps / n
        if frac >= 1:
            break
        cancel.check()
        values, warning = v.driver.step(min(1.0, (rnd + frac) / config.rounds))
        if warning:
            yield Log(f"{v.key}: {warning}", level="warning")
        if values is None:
            continue
        steps += 1
        for key, val in values.items():
            sums[key] = sums.get(key, 0.0) + val
        yield Progress("prior training", done0 + steps, total if config.visit_seconds <= 0 else 0)
    seconds = time.perf_counter() - t0
    row = {"round": rnd + 1, "video": v.key, "steps": steps, "seconds": round(seconds, 2),
           **{k: round(val / max(steps, 1), 5) for k, val in sums.items()}}
    if config.eval_every and (rnd + 1) % config.eval_every == 0 and s.project.held_out:
        with torch.no_grad():
            scores = live_scores(s, live_frames(s.project, 1))
        row.update({f"heldout_{k}": round(val, 3) for k, val in scores.items()})
    return row


def _save_video(path: Path, v: _Video, rnd: int) -> None:
    # The body SDF grid is rebuilt from the project when the video is opened; the rest is what training changed.
    model = {k: t.detach().cpu() for k, t in v.session.avatar.state_dict().items()
             if not is_shared(k, v.session.cfg.prior_shares) and not k.startswith("sdf.body.")}
    _save_torch(path, {"video": v.key, "round": rnd + 1,
                       "step": v.session.step, "model": model, "own_optimizer": v.opt.field_opts[1].state_dict(),
                       "body_optimizer": v.opt.body.state_dict() if v.opt.body else None})


def _round_report(rnd: int, rounds: int, everyone: list[dict], rows: list[dict]) -> Iterator[Event]:
    for r in rows:
        held = f", held-out psnr {r['heldout_psnr']:.2f} (person {r.get('heldout_m_psnr', float('nan')):.2f})" \
            if "heldout_psnr" in r else ""
        yield Log(f"round {r['round']}/{rounds} {r['video']}: {r['steps']} steps, loss {r.get('total', 0):.4f}, "
                  f"batch psnr {r.get('psnr_batch', 0):.2f}{held}")
    if len(everyone) > 1:
        per = ", ".join(f"rank {s['rank']}: {1000 * s['compute_s'] / max(s['steps'], 1):.0f} ms/step, "
                        f"sync {s['sync_s']:.2f} s" for s in everyone)
        yield Log(f"round {rnd + 1}: {per}")
        if len({s["digest"] for s in everyone}) != 1:
            raise UserError("the training processes hold different shared weights after averaging (a bug).")


def _write_outputs(out: Path, shared: dict, shared_opt, cfg, cfg_dict, keys, body_model, rounds_done, everyone,
                   history) -> None:
    log_beta = float(np.median([b for s in everyone for b in s["log_beta"]]))
    codes = [c for s in everyone for c in s["codes"]]
    extra = {"video_code": np.mean(codes, 0).tolist()} if codes else {}
    total_steps = sum(r["steps"] for r in history)

    save_prior(out, shared, cfg, body_model, {"videos": keys, "rounds": rounds_done, "steps": total_steps,
                                              "log_beta": log_beta, **extra})
    _save_torch(out / TRAINING_DIR / "state.pt", {
        "round": rounds_done, "videos": keys, "config": cfg_dict,
        "shared": {n: p.detach().cpu().clone() for n, p in shared.items()},
        "shared_optimizer": shared_opt.state_dict()})
    atomic.write_bytes(out / LOG_FILE, "".join(json.dumps(h) + "\n" for h in history).encode())
