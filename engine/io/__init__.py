"""File formats: video and meshes."""
