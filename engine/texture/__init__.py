"""Textures of the fitted avatar, baked from the video's own pixels onto a UV-mapped mesh (bake.py)."""

from engine.texture.bake import BakeConfig, bake_job, bake_session, load_bake, texture_dir
from engine.texture.render import posed_textured, render_textured

__all__ = ["BakeConfig", "bake_job", "bake_session", "load_bake", "posed_textured", "render_textured", "texture_dir"]
