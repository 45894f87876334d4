"""The export dialogs: what mesh to write (the same `ExportConfig` the CLI's `export` builds), and the
animated avatar (the `RigConfig` of `export --rigged`).

Formats: the vertex-coloured ones (`engine.mesh.FORMATS`) and the textured ones (`TEXTURED_FORMATS`):
a texture size makes an OBJ an OBJ + MTL + PNG; a GLB always carries its texture; a PLY never does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
)

from app.bake_flow import SIZES
from engine.export import ExportConfig, RigConfig
from engine.mesh import FORMATS
from engine.mesh.files import TEXTURED_FORMATS
from engine.settings import choices, field_docs
from engine.texture import BakeConfig

WHAT = ("canonical", "current frame", "whole sequence")
ALL_FORMATS = tuple(dict.fromkeys((*FORMATS, *TEXTURED_FORMATS)))  # obj, ply, glb


@dataclass(frozen=True)
class ExportRequest:
    """Arguments of one `export_job` call."""

    out: str
    config: ExportConfig
    sequence: bool = False
    fmt: str = "obj"
    overwrite: bool = False


class ExportDialog(QDialog):
    """Asks for format, pose, resolution, face budget and up axis; shows the triangle count first."""

    count_requested = Signal(int, object)  # resolution, face budget (None: all)

    def __init__(self, frame: int, num_frames: int, default_dir: str, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export mesh")
        self.frame = frame
        f = QFormLayout(self)
        self.fmt = QComboBox()
        self.fmt.addItems(ALL_FORMATS)
        self.fmt.setToolTip("OBJ (vertex colours as extra values, or with a texture: OBJ + MTL + PNG), PLY (binary, "
                            "vertex colours) or GLB (glTF binary with its texture inside)")
        f.addRow("Format", self.fmt)
        docs = field_docs(ExportConfig)  # the same text as the CLI's help
        self.texture = QComboBox()
        self.texture.addItem("off (vertex colours)", None)
        for size in SIZES:
            self.texture.addItem(f"{size} × {size}", size)
        self.texture.setToolTip(docs.get("texture", "Bake a texture of this size from the video into the export "
                                                    "(off: vertex colours of the colour field)"))
        f.addRow("Texture", self.texture)
        self.what = QComboBox()
        self.what.addItems(WHAT)
        self.what.setItemText(1, f"current frame ({frame})")
        self.what.setToolTip("Canonical star pose, posed into the current frame, or every frame into a folder")
        f.addRow("Pose", self.what)
        row = QHBoxLayout()
        self.out = QLineEdit(str(Path(default_dir) / "avatar.obj"))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.out)
        row.addWidget(browse)
        f.addRow("Save to", row)
        self.resolution = QSpinBox()
        self.resolution.setRange(16, 1024)
        self.resolution.setValue(256)
        self.resolution.setToolTip(docs.get("resolution", ""))
        f.addRow("Resolution", self.resolution)
        row = QHBoxLayout()
        self.limit = QCheckBox("at most")
        self.faces = QSpinBox()
        self.faces.setRange(100, 10_000_000)
        self.faces.setValue(50_000)
        self.faces.setSingleStep(1000)
        self.faces.setEnabled(False)
        self.faces.setToolTip(docs.get("faces", ""))
        self.limit.toggled.connect(self.faces.setEnabled)
        row.addWidget(self.limit)
        row.addWidget(self.faces)
        row.addWidget(QLabel("triangles"))
        f.addRow("Face budget", row)
        self.up = QComboBox()
        for axis in choices(ExportConfig, "up"):
            self.up.addItem(f"{axis.upper()} up", axis)
        self.up.setToolTip(docs.get("up", ""))
        f.addRow("Up axis", self.up)
        self.count = QLabel("counting triangles…")
        f.addRow("Triangles", self.count)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        f.addRow(buttons)
        self.overwrite = False
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(lambda: self.count_requested.emit(self.resolution.value(), self._faces()))
        for sig in (self.resolution.valueChanged, self.faces.valueChanged, self.limit.toggled):
            sig.connect(lambda *_: self._schedule_count())
        self.fmt.currentTextChanged.connect(self._fix_suffix)
        self.fmt.currentTextChanged.connect(self._fit_texture)
        self.texture.currentIndexChanged.connect(lambda _: self._fit_faces())
        self.what.currentIndexChanged.connect(lambda _: self._fix_suffix(self.fmt.currentText()))

    def showEvent(self, e) -> None:  # noqa: N802 - Qt override
        super().showEvent(e)
        self._schedule_count()

    def _schedule_count(self) -> None:
        self.count.setText("counting triangles…")
        self._debounce.start()

    def _faces(self) -> int | None:
        return self.faces.value() if self.limit.isChecked() and self.limit.isEnabled() else None

    def show_count(self, resolution: int, faces, n: int) -> None:
        if resolution == self.resolution.value() and faces == self._faces():
            self.count.setText(f"{n:,} per mesh")

    def _fit_texture(self, fmt: str) -> None:
        """The texture choices the format allows: a PLY has none, a GLB always has one."""
        box, item = self.texture, self.texture.model().item(0)
        box.setEnabled(fmt in TEXTURED_FORMATS)
        item.setEnabled(fmt in FORMATS)
        if fmt not in TEXTURED_FORMATS:
            box.setCurrentIndex(0)
        elif fmt not in FORMATS and box.currentData() is None:
            box.setCurrentIndex(box.findData(BakeConfig().size))
        self._fit_faces()

    def _fit_faces(self) -> None:
        """A textured mesh keeps all its triangles (decimating would undo its UV atlas)."""
        textured = self._texture_size() is not None
        self.limit.setEnabled(not textured)
        self.faces.setEnabled(not textured and self.limit.isChecked())
        self.limit.setToolTip("A textured mesh keeps every triangle: lower the resolution instead" if textured else "")

    def _texture_size(self) -> int | None:
        return self.texture.currentData() if self.texture.isEnabled() else None

    def _sequence(self) -> bool:
        return self.what.currentIndex() == 2

    def _fix_suffix(self, fmt: str) -> None:
        p = Path(self.out.text())
        if self._sequence():
            self.out.setText(str(p.with_suffix("")) if p.suffix.lower()[1:] in ALL_FORMATS else str(p))
        else:
            self.out.setText(str(p.with_suffix("." + fmt) if p.suffix else p.with_name(p.name + "." + fmt)))

    def _browse(self) -> None:
        if self._sequence():
            d = QFileDialog.getExistingDirectory(self, "Folder for the sequence", self.out.text())
            if d:
                self.out.setText(d)
            return
        fmt = self.fmt.currentText()
        p, _ = QFileDialog.getSaveFileName(self, "Export mesh", self.out.text(), f"{fmt.upper()} mesh (*.{fmt})")
        if p:
            self.out.setText(p)
            self.overwrite = True  # the file dialog already asked about replacing it

    def _accept(self) -> None:
        p = Path(self.out.text()).expanduser()
        exists = (p.is_dir() and any(p.iterdir())) if self._sequence() else p.exists()
        if exists and not self.overwrite:
            r = QMessageBox.question(self, "Replace?", f"{p} already exists. Replace it?")
            if r != QMessageBox.StandardButton.Yes:
                return
            self.overwrite = True
        self.accept()

    def request(self) -> ExportRequest:
        cfg = ExportConfig(resolution=self.resolution.value(), faces=self._faces(),
                           frame=self.frame if self.what.currentIndex() == 1 else None, up=self.up.currentData(),
                           texture=self._texture_size())
        return ExportRequest(str(Path(self.out.text()).expanduser()), cfg, self._sequence(), self.fmt.currentText(),
                             self.overwrite)


@dataclass(frozen=True)
class RigRequest:
    """Arguments of one `rigged_job` call."""

    out: str
    config: RigConfig
    overwrite: bool = False


class RigDialog(QDialog):
    """Export animated avatar: a rigged glTF binary (skeleton, skin weights, texture, the video's motion)."""

    def __init__(self, default_dir: str, fps: float, has_bake: bool, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export animated avatar")
        docs = field_docs(RigConfig)  # the same text as the CLI's help
        f = QFormLayout(self)
        row = QHBoxLayout()
        self.out = QLineEdit(str(Path(default_dir) / "avatar_rigged.glb"))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.out)
        row.addWidget(browse)
        f.addRow("Save to", row)
        self.rest = QComboBox()
        for rest in choices(RigConfig, "rest"):
            self.rest.addItem(rest, rest)
        self.rest.setToolTip(docs.get("rest", ""))
        f.addRow("Bind pose", self.rest)
        self.animation = QCheckBox("the video's motion")
        self.animation.setChecked(True)
        self.animation.setToolTip(docs.get("animation", ""))
        f.addRow("Animation", self.animation)
        self.fps = QDoubleSpinBox()
        self.fps.setRange(1.0, 240.0)
        self.fps.setDecimals(2)
        self.fps.setValue(fps)
        self.fps.setSuffix(" fps")
        self.fps.setToolTip(docs.get("fps", ""))
        self.animation.toggled.connect(self.fps.setEnabled)
        f.addRow("Frame rate", self.fps)
        self.default_fps = fps
        self.texture = QComboBox()
        self.texture.addItem("the project's bake" if has_bake else "vertex colours (no bake yet)", None)
        for size in SIZES:
            self.texture.addItem(f"bake {size} × {size}" if not has_bake else f"{size} × {size} (bake again if it "
                                 "differs)", size)
        self.texture.setToolTip(docs.get("texture", ""))
        f.addRow("Texture", self.texture)
        self.resolution = QSpinBox()
        self.resolution.setRange(16, 1024)
        self.resolution.setValue(256)
        self.resolution.setToolTip(docs.get("resolution", ""))
        f.addRow("Resolution", self.resolution)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        f.addRow(buttons)
        self.overwrite = False

    def _browse(self) -> None:
        p, _ = QFileDialog.getSaveFileName(self, "Export animated avatar", self.out.text(), "glTF binary (*.glb)")
        if p:
            self.out.setText(p if p.lower().endswith(".glb") else p + ".glb")
            self.overwrite = True  # the file dialog already asked about replacing it

    def _accept(self) -> None:
        p = Path(self.out.text()).expanduser()
        if p.exists() and not self.overwrite:
            r = QMessageBox.question(self, "Replace?", f"{p} already exists. Replace it?")
            if r != QMessageBox.StandardButton.Yes:
                return
            self.overwrite = True
        self.accept()

    def request(self) -> RigRequest:
        fps = self.fps.value()
        cfg = RigConfig(resolution=self.resolution.value(), texture=self.texture.currentData(),
                        rest=self.rest.currentData(), animation=self.animation.isChecked(),
                        fps=None if abs(fps - self.default_fps) < 1e-3 else fps)
        return RigRequest(str(Path(self.out.text()).expanduser()), cfg, self.overwrite)
