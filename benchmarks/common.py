"""Shared benchmark helpers: the standard scene and machine description."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from engine.synth.scene import SynthConfig

# The standard scene every quality/speed number in README refers to.
STANDARD_SCENE = SynthConfig(frames=60, size=256, motion="turn", garment="shirt", seed=0, pose_noise=3.0)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"
