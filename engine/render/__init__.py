"""Rendering: exact ray casting of meshes (ground truth, baselines; raycast.py) and VolSDF compositing of
SDF samples along rays (volume.py). Frames of the refined avatar are rendered by engine/refine/render.py."""
