"""The left control panel: project, refinement settings (preset, budget, device, body model,
advanced fields with the config's own docs as tooltips) and the Start / Pause / Resume / Stop buttons."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import torch
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.errors import UserError
from engine.preprocess.job import PreprocessConfig
from engine.refine.config import PriorMode, RefineConfig, load_preset
from engine.refine.prior_file import PRIOR_FILE, SHIPPED_PRIOR
from engine.settings import Device, choices, field_docs

# Display names of some choices; every choice offered comes from its declaration (engine/refine/config.py).
PRIOR_MODE_LABELS = {"refine": "Refine everything", "inference": "Inference (shape fixed)"}


def cuda_available() -> bool:
    return torch.cuda.is_available()


class ControlPanel(QWidget):
    """Settings and run buttons. Emits requests; the window decides what runs."""

    open_requested = Signal()
    new_requested = Signal()
    start_requested = Signal()
    pause_requested = Signal()
    resume_requested = Signal()
    stop_requested = Signal()

    def __init__(self, settings, parent=None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.docs = field_docs(RefineConfig)
        lay = QVBoxLayout(self)

        # ---- project ---------------------------------------------------------------------------
        g = QGroupBox("Project")
        v = QVBoxLayout(g)
        self.project_label = QLabel("No project open.\nOpen a project folder, or drop a video here.")
        self.project_label.setWordWrap(True)
        self.project_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # long paths
        self.project_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        v.addWidget(self.project_label)
        row = QHBoxLayout()
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip("Open a project folder (one with project.json)")
        self.new_button = QPushButton("New from video…")
        self.new_button.setToolTip("Preprocess a video of one person into a new project")
        row.addWidget(self.open_button)
        row.addWidget(self.new_button)
        v.addLayout(row)
        self.open_button.clicked.connect(self.open_requested)
        self.new_button.clicked.connect(self.new_requested)
        lay.addWidget(g)

        # ---- settings --------------------------------------------------------------------------
        g = QGroupBox("Refinement")
        f = QFormLayout(g)
        self.preset = QComboBox()
        self.preset.addItems(choices(RefineConfig, "preset"))
        self.preset.setToolTip(self.docs["preset"])
        f.addRow("Preset", self.preset)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0, 24 * 60)
        self.minutes.setDecimals(1)
        self.minutes.setSuffix(" min")
        self.minutes.setSpecialValueText("no limit")
        self.minutes.setToolTip("Wall-clock budget of one run (0: no time limit)")
        f.addRow("Time budget", self.minutes)
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setToolTip("Steps to add in one run (a resumed run continues from the checkpoint's step)")
        f.addRow("Steps per run", self.steps)
        self.device = QComboBox()
        for name in choices(Device):
            if name != "cuda":
                self.device.addItem(name.upper(), name)
            elif cuda_available():  # listed only when this PyTorch build sees a GPU
                self.device.addItem(f"CUDA ({torch.cuda.get_device_name(0)})", name)
        self.device.setToolTip("Compute device (CUDA is listed when this PyTorch build sees a GPU)")
        f.addRow("Device", self.device)
        self.body = QComboBox()
        self.body.addItems(choices(PreprocessConfig, "body"))
        self.body.setToolTip("Body model of new projects. " + field_docs(PreprocessConfig)["body"])
        f.addRow("Body model", self.body)
        row = QHBoxLayout()
        self.body_dir = QLineEdit()
        self.body_dir.setPlaceholderText("SMPL/SMPL-X folder")
        self.body_dir.setToolTip("Folder with SMPL_NEUTRAL.pkl / SMPLX_NEUTRAL.npz (never shipped: licence-gated)")
        pick = QToolButton()
        pick.setText("…")
        pick.clicked.connect(self._pick_body_dir)
        row.addWidget(self.body_dir)
        row.addWidget(pick)
        f.addRow("Model files", row)
        self.resolution = QSpinBox()
        self.resolution.setRange(64, 4096)
        self.resolution.setSuffix(" px")
        self.resolution.setToolTip("Working resolution of new projects: long side of the frames (never upscaled)")
        f.addRow("Working resolution", self.resolution)
        self.prior = QComboBox()
        self.prior.addItem("Body only (no prior)", "")
        self.prior.addItem("Shipped prior", str(SHIPPED_PRIOR))
        if not (SHIPPED_PRIOR / PRIOR_FILE).is_file():
            self.prior.model().item(1).setEnabled(False)  # a source checkout before `make prior`
        self.prior.addItem("Prior folder…", "pick")
        self.prior.setToolTip("What a new fit's human fields start from: the naked body, or a prior trained over "
                              "many videos (`prior train`). A project that already has a checkpoint resumes it.")
        self.prior.activated.connect(self._prior_chosen)
        f.addRow("Start from", self.prior)
        self.prior_mode = QComboBox()
        for mode in choices(PriorMode):
            self.prior_mode.addItem(PRIOR_MODE_LABELS.get(mode, mode), mode)
        self.prior_mode.setToolTip("Refine: train the prior's fields further on this video. Inference: keep the "
                                   "prior's shape fixed and fit only this video's code, colour, background, density and "
                                   "body (a first look).")
        f.addRow("Prior mode", self.prior_mode)
        self.prior.currentIndexChanged.connect(lambda _: self.prior_mode.setEnabled(bool(self.prior_path)))
        lay.addWidget(g)

        # ---- advanced (collapsed) --------------------------------------------------------------
        self.adv_toggle = QToolButton()
        self.adv_toggle.setText("Advanced settings")
        self.adv_toggle.setCheckable(True)
        self.adv_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.adv_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced = QWidget()
        self.advanced.setVisible(False)
        self.adv_toggle.toggled.connect(self._toggle_advanced)
        af = QFormLayout(self.advanced)
        af.setContentsMargins(0, 0, 0, 0)
        self.fields: dict[str, QWidget] = {}
        hints = typing.get_type_hints(RefineConfig)
        for fld in dataclasses.fields(RefineConfig):
            if fld.name in ("preset", "freeze_shared", "prior_shares"):  # the prior and its mode set these
                continue
            w = self._field_widget(fld.name, hints[fld.name])
            w.setToolTip(self.docs.get(fld.name, ""))
            label = QLabel(fld.name)
            label.setToolTip(self.docs.get(fld.name, ""))
            af.addRow(label, w)
            self.fields[fld.name] = w
        reset = QPushButton("Reset to preset")
        reset.clicked.connect(lambda: self._load_preset_values({}))
        af.addRow(reset)
        lay.addWidget(self.adv_toggle)
        lay.addWidget(self.advanced)

        # ---- run -------------------------------------------------------------------------------
        g = QGroupBox("Run")
        v = QVBoxLayout(g)
        self.resume_note = QLabel("")
        self.resume_note.setWordWrap(True)
        self.resume_note.setStyleSheet("color: #2a6;")
        v.addWidget(self.resume_note)
        row = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.stop_button = QPushButton("Stop")
        self.start_button.setToolTip("Refine the avatar from scratch (or from the project's checkpoint)")
        self.pause_button.setToolTip("Stop after this step, keeping a checkpoint to resume from")
        self.resume_button.setToolTip("Continue from the project's checkpoint")
        self.stop_button.setToolTip("End this run; the last checkpoint is kept")
        for b, s in ((self.start_button, self.start_requested), (self.pause_button, self.pause_requested),
                     (self.resume_button, self.resume_requested), (self.stop_button, self.stop_requested)):
            row.addWidget(b)
            b.clicked.connect(s)
        v.addLayout(row)
        self.bake_after = QCheckBox("Bake a texture when a run ends")
        self.bake_after.setToolTip("When a run ends (not when it is paused), bake the texture from the video at the "
                                   "size chosen last in File ▸ Bake texture… It takes a while on a CPU (off by "
                                   "default).")
        v.addWidget(self.bake_after)
        self.stage = QLabel("Idle")
        v.addWidget(self.stage)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        v.addWidget(self.bar)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Cancel the running job")
        self.cancel_button.setVisible(False)
        v.addWidget(self.cancel_button)
        lay.addWidget(g)
        lay.addStretch(1)

        self._restore()
        self.preset.currentTextChanged.connect(lambda _: self._load_preset_values({}))
        self.set_run_state("no project")

    # ---- widgets for config fields ------------------------------------------------------------
    def _field_widget(self, name: str, typ) -> QWidget:
        if choices(RefineConfig, name):
            w = QComboBox()
            w.addItems(choices(RefineConfig, name))
            return w
        if typ is bool:
            return QCheckBox()
        if typ is str:  # a text field without a known set of choices
            w = QLineEdit()
            w.setProperty("text_field", True)
            return w
        if typ is int:
            w = QSpinBox()
            w.setRange(0, 10_000_000)
            return w
        w = QLineEdit()  # floats: free text keeps 5e-3 and 2e-05 readable
        return w

    def _set_field(self, name: str, value) -> None:
        w = self.fields[name]
        if isinstance(w, QComboBox):
            w.setCurrentText(str(value))
        elif isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif w.property("text_field"):
            w.setText(str(value))
        elif isinstance(w, QSpinBox):
            w.setValue(int(value))
        else:
            w.setText(f"{value:g}")

    def _get_field(self, name: str, typ):
        w = self.fields[name]
        if isinstance(w, QComboBox):
            return w.currentText()
        if isinstance(w, QCheckBox):
            return w.isChecked()
        if w.property("text_field"):
            return w.text()
        if isinstance(w, QSpinBox):
            return w.value()
        try:
            return float(w.text())
        except ValueError:
            raise UserError(f"advanced setting {name}: {w.text()!r} is not a number.") from None

    def _load_preset_values(self, overrides: dict) -> None:
        base = load_preset(self.preset.currentText())
        for name in self.fields:
            self._set_field(name, overrides.get(name, getattr(base, name)))

    def _toggle_advanced(self, on: bool) -> None:
        self.advanced.setVisible(on)
        self.adv_toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    def _pick_body_dir(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "SMPL / SMPL-X model folder", self.body_dir.text())
        if d:
            self.body_dir.setText(d)

    # ---- values -------------------------------------------------------------------------------
    def overrides(self) -> dict:
        """Advanced fields that differ from the preset."""
        base = load_preset(self.preset.currentText())
        hints = typing.get_type_hints(RefineConfig)
        out = {}
        for name in self.fields:
            v = self._get_field(name, hints[name])
            if v != getattr(base, name):
                out[name] = v
        return out

    def refine_config(self) -> RefineConfig:
        """The RefineConfig these settings describe (raises UserError on bad values)."""
        return load_preset(self.preset.currentText(), **self.overrides())

    def _prior_chosen(self, index: int) -> None:
        if self.prior.itemData(index) == "pick":
            d = QFileDialog.getExistingDirectory(self, "Prior folder (made by `prior train`)")
            self.set_prior(d or "")

    def set_prior(self, path: str) -> None:
        """Selects a prior folder ("" for none; the shipped one, or another that gets its own entry)."""
        i = self.prior.findData(path)
        if i < 0:
            self.prior.insertItem(self.prior.count() - 1, f"Prior: {Path(path).name}", path)
            i = self.prior.findData(path)
        self.prior.setCurrentIndex(i)
        self.prior_mode.setEnabled(bool(path))

    @property
    def prior_path(self) -> str | None:
        return self.prior.currentData() or None

    @property
    def prior_mode_name(self) -> str:
        return self.prior_mode.currentData()

    @property
    def device_name(self) -> str:
        return self.device.currentData()

    @property
    def body_model_dir(self) -> str | None:
        return self.body_dir.text().strip() or None

    def _restore(self) -> None:
        s = self.settings
        self.preset.setCurrentText(s.get("preset"))
        self.minutes.setValue(s.get("minutes"))
        self.steps.setValue(s.get("steps"))
        i = self.device.findData(s.get("device"))
        self.device.setCurrentIndex(max(i, 0))
        self.body.setCurrentText(s.get("body_model"))
        self.body_dir.setText(s.get("body_model_dir"))
        self.resolution.setValue(s.get("resolution"))
        prior = s.get("prior")
        self.set_prior(prior if not prior or Path(prior).is_dir() else "")
        self.prior_mode.setCurrentIndex(max(self.prior_mode.findData(s.get("prior_mode")), 0))
        self.bake_after.setChecked(bool(s.get("bake_after_run")))
        self._load_preset_values(s.overrides)

    def save(self) -> None:
        s = self.settings
        s.set("preset", self.preset.currentText())
        s.set("minutes", self.minutes.value())
        s.set("steps", self.steps.value())
        s.set("device", self.device_name)
        s.set("body_model", self.body.currentText())
        s.set("body_model_dir", self.body_dir.text())
        s.set("resolution", self.resolution.value())
        s.set("prior", self.prior_path or "")
        s.set("prior_mode", self.prior_mode_name)
        s.set("bake_after_run", int(self.bake_after.isChecked()))
        try:
            s.overrides = self.overrides()
        except UserError:
            pass  # an unparsable advanced value is simply not remembered

    # ---- run state ----------------------------------------------------------------------------
    def set_run_state(self, state: str) -> None:
        """no project | busy | idle | running | paused (buttons follow)."""
        self.state = state
        self.start_button.setEnabled(state == "idle")
        self.pause_button.setEnabled(state == "running")
        self.resume_button.setEnabled(state in ("paused", "resumable"))
        self.stop_button.setEnabled(state in ("running", "paused"))
        self.cancel_button.setVisible(state == "busy")
        for w in (self.open_button, self.new_button, self.preset, self.advanced, self.prior):
            w.setEnabled(state not in ("busy", "running"))
        self.prior_mode.setEnabled(state not in ("busy", "running") and bool(self.prior_path))
