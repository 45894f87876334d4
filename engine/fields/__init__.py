"""Building blocks of the neural fields: input encodings (positional, hash grid, tiny MLP; encodings.py),
the naked body's SDF grid (body_sdf.py) and the optional geometry encoder (geometry_encoder.py). The
avatar's SDF, colour and background fields are assembled from them in engine/refine/avatar.py."""
