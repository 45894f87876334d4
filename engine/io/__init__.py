"""Files: atomic writes (atomic.py), torch files with a format and version (torchfile.py), video (video.py)."""
