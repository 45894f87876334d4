"""Neural fields: encodings, SDF, colour and background fields."""
