"""Synthetic scenes with exact ground truth: a clothed, textured body moving in front of a
static background, rendered by ray casting (`python main.py synth`)."""
