"""The project folder: the one format every stage reads and writes.

Layout (schema 1)::

    PROJECT/
      project.json     schema version, body model, frame count, image size, fps, held-out frames,
                       optional "ground_truth" (relative path, synthetic scenes only), "source":
                       for a video: path, size, fps, rotation, focal (full-size and working px),
                       frame_indices / frame_times of the chosen source frames, interpolated
                       (frames filled from neighbours), dropped (source frames), warnings
      frames/NNNNNN.png   RGB frames at working resolution (lossless)
      masks/NNNNNN.png    person masks, 0 / 255
      cameras.json     {"frames": [{"K", "R", "t", "width", "height"}, ...]} world→camera, OpenCV axes
      body.npz         fitted body: shape [S], pose [N,J,3], global_orient [N,3], transl [N,3]
                       (axis-angle; conventions in engine/body/base.py)
      body_model.npz   the body model at the fitted shape and its canonical SDF grid, so that later stages
                       need neither the body model's package nor open3d (engine/project_body.py)
      keypoints.npy    optional 2D keypoints [N, K, 3] (x, y, confidence), KEYPOINT_NAMES order
      preprocess_config.json, preprocess_report.json, overlay.mp4, overlay_sheet.png
                       written by `preprocess` (engine/preprocess/job.py): the resolved settings;
                       per-frame fit quality (keypoint_error_px, mask_iou) and seconds per stage; the
                       fitted body drawn over every frame / over a few frames (the worst fitted last)
      refine_config.json  the resolved settings of the last `fit` (engine/refine/config.py)
      checkpoints/last.pt everything a fit needs to resume (engine/refine/checkpoint.py)
      history.json     the fit's loss curves and held-out scores, drawn again on reopening
                       (engine/refine/history.py)
      exports/         where the app proposes to export meshes

Held-out frames (every 5th: indices 4, 9, 14, ...) are never used for training; they are where
image metrics are reported. Every write is atomic; a project is only read, never "fixed up", except that
a project older than body_model.npz gains it on first use.
"""

from engine.project.project import (
    SCHEMA_VERSION,
    Project,
    check_output_dir,
    check_output_file,
    held_out_frames,
)

__all__ = ["SCHEMA_VERSION", "Project", "check_output_dir", "check_output_file", "held_out_frames"]
