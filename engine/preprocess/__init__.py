"""Preprocessing: video → frames (video.py), person masks and 2D keypoints (person.py, masks.py),
fitted body and camera (bodyfit.py); the whole `preprocess` job that writes a project (job.py), its
overlay of the fitted body (overlay.py) and its accuracy against synthetic ground truth (accuracy.py).

Submodules are imported directly (`from engine.preprocess.video import FrameReader`); this package
imports nothing so that opening a video does not load mediapipe or the body model.
"""
