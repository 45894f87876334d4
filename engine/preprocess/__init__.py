"""Preprocessing: video → frames (video.py), person masks and 2D keypoints (person.py, masks.py),
fitted body and camera (bodyfit.py).

Submodules are imported directly (`from engine.preprocess.video import FrameReader`); this package
imports nothing so that opening a video does not load mediapipe or the body model.
"""
