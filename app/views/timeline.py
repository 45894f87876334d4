"""Frame slider and play button: the one current frame that the 2D and 3D panels show."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QToolButton, QWidget


class Timeline(QWidget):
    frame_changed = Signal(int)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 0, 4, 0)
        self.play_button = QToolButton()
        self.play_button.setText("▶")
        self.play_button.setCheckable(True)
        self.play_button.setToolTip("Play / pause (Space)")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Current frame (Left / Right arrows)")
        self.label = QLabel("0 / 0")
        self.label.setMinimumWidth(70)
        lay.addWidget(self.play_button)
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.label)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.step_forward)
        self.play_button.toggled.connect(self._play)
        self.slider.valueChanged.connect(self._changed)
        self.set_frames(0)

    def set_frames(self, n: int, fps: float = 10.0) -> None:
        self.stop()
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, n - 1))
        self.slider.setValue(0)
        self.slider.blockSignals(False)
        self.n = n
        self.timer.setInterval(int(1000 / min(max(fps, 1.0), 30.0)))  # the views cannot follow >30 Hz
        self.setEnabled(n > 0)
        self._update_label()

    @property
    def frame(self) -> int:
        return self.slider.value()

    def set_frame(self, i: int) -> None:
        self.slider.setValue(max(0, min(i, self.n - 1)))

    def step_forward(self) -> None:
        if self.n:
            self.set_frame((self.frame + 1) % self.n)

    def step_back(self) -> None:
        if self.n:
            self.set_frame((self.frame - 1) % self.n)

    def toggle_play(self) -> None:
        self.play_button.toggle()

    def stop(self) -> None:
        self.play_button.setChecked(False)

    def _play(self, on: bool) -> None:
        self.play_button.setText("⏸" if on else "▶")
        (self.timer.start if on else self.timer.stop)()

    def _changed(self, i: int) -> None:
        self._update_label()
        self.frame_changed.emit(i)

    def _update_label(self) -> None:
        self.label.setText(f"{self.frame} / {max(self.n - 1, 0)}")
