"""Loss curves (total and each term), the training batch PSNR and the held-out PSNR, live (pyqtgraph)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QSplitter, QVBoxLayout, QWidget

from app.views.elided import ElidedLabel

NOT_LOSSES = {"beta", "psnr_batch", "rays_per_s"}  # values of a step that are not loss terms
HELD_OUT_KEYS = {"psnr": "held-out frames", "m_psnr": "held-out, person only"}
COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#808000",
          "#000075", "#469990"]


class LossPlot(QWidget):
    """One curve per loss term (total drawn thicker), log-scale toggle; beside it, the PSNR of each training
    batch and, every so often, of renders of held-out frames."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        row = QHBoxLayout()
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.setChecked(True)
        self.log_scale.setToolTip("Logarithmic loss axis")
        self.summary = ElidedLabel("No steps yet.")
        self.summary.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        row.addWidget(self.log_scale)
        row.addWidget(self.summary, 1)
        lay.addLayout(row)
        # Side by side: the panel below the views is wide and short, and both plots need their height. The
        # loss terms' legend gets its own column right of the curves (inside, it would hide half of them).
        legend = {"labelTextSize": "8pt", "labelTextColor": "#222"}
        self.loss_area = pg.GraphicsLayoutWidget()
        self.loss_area.setBackground("w")
        self.plot = self.loss_area.addPlot(row=0, col=0)
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "loss")
        self.plot.getAxis("left").enableAutoSIPrefix(False)  # "(x0.001)" on a log axis only confuses
        self.plot.legend = pg.LegendItem(frame=False, verSpacing=-6, **legend)  # PlotItem.plot(name=...) fills it
        self.loss_area.addItem(self.plot.legend, row=0, col=1)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        # The PSNR legend is one row above its plot: inside, every corner hides some curve at some point.
        self.psnr_area = pg.GraphicsLayoutWidget()
        self.psnr_area.setBackground("w")
        self.psnr_plot = self.psnr_area.addPlot(row=1, col=0)
        self.psnr_plot.setLabel("bottom", "step")
        self.psnr_plot.setLabel("left", "PSNR dB")
        self.psnr_plot.legend = pg.LegendItem(frame=False, colCount=2, verSpacing=-6, **legend)
        self.psnr_area.addItem(self.psnr_plot.legend, row=0, col=0)
        self.set_held_out_frames([], 0)
        self.psnr_plot.setXLink(self.plot)
        self.psnr_plot.showGrid(x=True, y=True, alpha=0.2)
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.loss_area)
        plots.addWidget(self.psnr_area)
        plots.setStretchFactor(0, 3)
        plots.setStretchFactor(1, 2)
        lay.addWidget(plots, 1)
        self.log_scale.toggled.connect(lambda on: self.plot.setLogMode(y=on))
        self.plot.setLogMode(y=True)
        self.clear()

    def clear(self) -> None:
        self.plot.clear()
        self.psnr_plot.clear()
        self.steps: list[int] = []
        self.data: dict[str, list[float]] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.psnr_curve = self.psnr_plot.plot(name="training batch", pen=pg.mkPen("#333", width=1.5))
        self.held_steps: list[int] = []
        self.held: dict[str, list[float]] = {k: [] for k in HELD_OUT_KEYS}
        self.held_curves = {
            k: self.psnr_plot.plot(name=name, pen=pg.mkPen(c, width=2, style=style), symbol=sym, symbolSize=7,
                                   symbolBrush=c, symbolPen=c)
            for (k, name), c, style, sym in zip(HELD_OUT_KEYS.items(), ("#d62728", "#1f77b4"),
                                                (Qt.PenStyle.SolidLine, Qt.PenStyle.DashLine), ("o", "t"))}
        self.summary.setText("No steps yet.")

    @property
    def num_points(self) -> int:
        return len(self.steps)

    def add(self, events: list) -> None:
        """Appends a batch of Losses events and redraws once."""
        self._add_points([(ev.step, ev.values) for ev in events])

    def show_history(self, losses: list[dict], scores: list[dict]) -> None:
        """Draws a saved run (`engine.refine.history.RunHistory`'s entries: {"step", **values}) afresh."""
        self.clear()
        self._add_points([(e["step"], {k: v for k, v in e.items() if k != "step"}) for e in losses])
        self._add_held_out([(e["step"], e) for e in scores])

    def _add_points(self, points: list[tuple[int, dict]]) -> None:
        if not points:
            return
        for step, values in points:
            if self.steps and step <= self.steps[-1]:
                # A resumed run restarts the numbering at the checkpoint: drop what it redoes.
                keep = int(np.searchsorted(self.steps, step))
                self.steps = self.steps[:keep]
                for k in self.data:
                    self.data[k] = self.data[k][:keep]
                self._drop_held_out_from(step)
            n = len(self.steps)
            self.steps.append(step)
            for k, v in values.items():
                series = self.data.setdefault(k, [float("nan")] * n)
                series.append(float(v))
            for series in self.data.values():
                if len(series) < n + 1:
                    series.append(float("nan"))
        x = np.asarray(self.steps, float)
        for k, series in self.data.items():
            if k in NOT_LOSSES:
                continue
            if k not in self.curves:
                color = COLORS[len(self.curves) % len(COLORS)]
                width = 2.5 if k == "total" else 1.2
                self.curves[k] = self.plot.plot(name=k, pen=pg.mkPen(color, width=width))
            y = np.asarray(series, float)
            y = np.where(y > 0, y, np.nan)  # log axis: zeros/negatives are gaps, not errors
            self.curves[k].setData(x, y, connect="finite")
        if "psnr_batch" in self.data:
            self.psnr_curve.setData(x, np.asarray(self.data["psnr_batch"], float), connect="finite")
        self._summarise()

    def set_held_out_frames(self, frames: list[int], every: int) -> None:
        """Names the held-out frames that are scored (and how often) in the PSNR plot's tooltip."""
        which = f"frame{'s' if len(frames) > 1 else ''} {', '.join(map(str, frames))}" if frames else "none"
        self.psnr_area.setToolTip(
            "<b>training batch</b>: PSNR of the rays of one step, on the frames the avatar learns from.<br>"
            f"<b>held-out</b>: PSNR of renders of held-out frames ({which}) the avatar never trains on, "
            f"from the latest checkpoint{f', about every {every} steps' if every else ''}; <i>person only</i> "
            "counts the person's pixels (masked PSNR).<br>A held-out frame's body is interpolated from its refined "
            "neighbours (no test-time pose fit, unlike <tt>eval</tt>): a live trend, not the final score.")

    def add_held_out(self, step: int, scores: dict) -> None:
        """One held-out point (a point at a step already plotted replaces it)."""
        self._add_held_out([(step, scores)])

    def _add_held_out(self, points: list[tuple[int, dict]]) -> None:
        if not points:
            return
        for step, scores in points:
            self._drop_held_out_from(step)
            self.held_steps.append(step)
            for k, series in self.held.items():
                series.append(float(scores.get(k, float("nan"))))
        x = np.asarray(self.held_steps, float)
        for k, curve in self.held_curves.items():
            curve.setData(x, np.asarray(self.held[k], float), connect="finite")
        self._summarise()

    @property
    def num_held_out(self) -> int:
        return len(self.held_steps)

    def _drop_held_out_from(self, step: int) -> None:
        keep = int(np.searchsorted(self.held_steps, step))
        self.held_steps = self.held_steps[:keep]
        for k in self.held:
            self.held[k] = self.held[k][:keep]

    def _summarise(self) -> None:
        text = []
        if self.steps:
            last = {k: v[-1] for k, v in self.data.items()}
            text.append(f"step {self.steps[-1]}   total {last.get('total', float('nan')):.4f}   "
                        f"batch PSNR {last.get('psnr_batch', float('nan')):.1f} dB")
        if self.held_steps:
            text.append(f"held-out PSNR {self.held['psnr'][-1]:.1f} dB (person {self.held['m_psnr'][-1]:.1f} dB) "
                        f"at step {self.held_steps[-1]}")
        self.summary.setText("   ·   ".join(text) or "No steps yet.")
