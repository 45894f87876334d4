"""Cameras, rotations and linear blend skinning: pure tensor maths, no models, no I/O."""
