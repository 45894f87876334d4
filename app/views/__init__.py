"""The live views: loss curves, the 2D frame panel, the 3D mesh panel and the frame timeline."""
