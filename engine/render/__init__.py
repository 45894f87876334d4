"""Rendering: ray-cast meshes (ground truth, baselines) and, later, volume rendering of fields."""
