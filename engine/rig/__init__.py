"""Rigged avatars: the body's skeleton pruned to the bones that move, skin weights transferred from the body
to the clothed mesh, the motion as skinning matrices, and the glTF binary that holds them all."""

from engine.rig.gltf import rigged_glb_bytes, write_rigged_glb
from engine.rig.rigged import RiggedAvatar, build_rig, skin_vertices
from engine.rig.skeleton import REST_POSES, RestPose, Skeleton, build_skeleton, rest_pose, rest_transforms
from engine.rig.weights import MAX_INFLUENCES, WeightConfig, dense_weights, limit_influences, transfer_weights

__all__ = [
    "MAX_INFLUENCES", "REST_POSES", "RestPose", "RiggedAvatar", "Skeleton", "WeightConfig", "build_rig",
    "build_skeleton", "dense_weights", "limit_influences", "rest_pose", "rest_transforms", "rigged_glb_bytes", "skin_vertices",
    "transfer_weights", "write_rigged_glb",
]
