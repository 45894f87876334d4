"""Textures of the fitted avatar, baked from the video's own pixels onto a UV-mapped mesh (bake.py)."""

from engine.texture.bake import BakeConfig, bake_job, bake_session, load_bake, texture_dir

__all__ = ["BakeConfig", "bake_job", "bake_session", "load_bake", "texture_dir"]
