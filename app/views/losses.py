"""Loss curves (total and each term) and the training batch PSNR, live (pyqtgraph)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

NOT_LOSSES = {"beta", "psnr_batch"}  # values of a Losses event that are not loss terms
COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#808000",
          "#000075", "#469990"]


class LossPlot(QWidget):
    """One curve per loss term (total drawn thicker), log-scale toggle, PSNR of the batch below."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        row = QHBoxLayout()
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.setChecked(True)
        self.log_scale.setToolTip("Logarithmic loss axis")
        self.summary = QLabel("No steps yet.")
        row.addWidget(self.log_scale)
        row.addStretch(1)
        row.addWidget(self.summary)
        lay.addLayout(row)
        self.plot = pg.PlotWidget(background="w")
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "loss")
        self.plot.addLegend(offset=(-10, 10), labelTextSize="8pt")
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.psnr_plot = pg.PlotWidget(background="w")
        self.psnr_plot.setLabel("left", "PSNR dB")
        self.psnr_plot.setToolTip("PSNR of the training batch (the rays of one step)")
        self.psnr_plot.setXLink(self.plot)
        self.psnr_plot.setMaximumHeight(140)
        self.psnr_plot.showGrid(x=True, y=True, alpha=0.2)
        lay.addWidget(self.plot, 3)
        lay.addWidget(self.psnr_plot, 1)
        self.log_scale.toggled.connect(lambda on: self.plot.setLogMode(y=on))
        self.plot.setLogMode(y=True)
        self.clear()

    def clear(self) -> None:
        self.plot.clear()
        self.psnr_plot.clear()
        self.steps: list[int] = []
        self.data: dict[str, list[float]] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.psnr_curve = self.psnr_plot.plot(pen=pg.mkPen("#333", width=1.5))
        self.summary.setText("No steps yet.")

    @property
    def num_points(self) -> int:
        return len(self.steps)

    def add(self, events: list) -> None:
        """Appends a batch of Losses events and redraws once."""
        if not events:
            return
        for ev in events:
            if self.steps and ev.step <= self.steps[-1]:
                # A resumed run restarts the numbering at the checkpoint: drop what it redoes.
                keep = int(np.searchsorted(self.steps, ev.step))
                self.steps = self.steps[:keep]
                for k in self.data:
                    self.data[k] = self.data[k][:keep]
            n = len(self.steps)
            self.steps.append(ev.step)
            for k, v in ev.values.items():
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
        last = events[-1].values
        self.summary.setText(f"step {events[-1].step}   total {last.get('total', float('nan')):.4f}   "
                             f"batch PSNR {last.get('psnr_batch', float('nan')):.1f} dB")
