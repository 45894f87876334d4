"""Imports a rigged .glb in Blender and reports what arrived (run by test_rig.py and benchmarks/rig_blender.py).

    blender -b --factory-startup --python-exit-code 1 --python tests/engine/blender_rig_check.py -- \
        RIG.glb FPS OUT.npz FRAME [FRAME ...] [--render PREFIX]

Sets the scene's frame rate to FPS before importing (the importer turns key times into frames with it), then
reports the armature's bones, the mesh's vertex groups, the images reachable from the material's Base Color,
and the action's key frames (one line `RESULT {json}`), and writes OUT.npz: `rest` (the mesh's vertices as
imported, undeformed) and `frame_K` (the evaluated, deformed mesh with the action at the K-th key), both in
world coordinates converted back to glTF's Y-up axes. With --render, also renders the avatar in two of the
listed frames and in a pose the clip never had (the left arm raised) to PREFIX_*.png (Cycles on the CPU, 512 px).
Any failure raises, and Blender then exits with 1.
"""

import json
import math
import sys

import bpy
import mathutils
import numpy

# Debian's Blender 3.4 glTF importer still calls numpy.bool, which Debian's numpy 1.24 no longer has.
if "bool" not in numpy.__dict__:
    numpy.bool = bool


def world_coords(obj) -> numpy.ndarray:
    """Evaluated (deformed) vertices of a mesh object in world space, as glTF axes (x, y, z) = (x, z, -y)."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(depsgraph)
    mesh = ev.to_mesh()
    co = numpy.zeros(3 * len(mesh.vertices))
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    m = numpy.array(ev.matrix_world)
    world = co @ m[:3, :3].T + m[:3, 3]
    ev.to_mesh_clear()
    return numpy.stack([world[:, 0], world[:, 2], -world[:, 1]], axis=1)


def images_of(obj) -> list:
    out = []
    for slot in obj.material_slots:
        material = slot.material
        if material is None or not material.use_nodes:
            continue
        for node in material.node_tree.nodes:
            if node.type == "BSDF_PRINCIPLED":
                for link in node.inputs["Base Color"].links:
                    source = link.from_node
                    if source.type == "TEX_IMAGE" and source.image is not None:
                        out.append(list(source.image.size))
    return out


def render(scene, arm, mesh, path: str) -> None:
    """A picture of the avatar from the front, framed on its bounding box."""
    pts = world_coords(mesh)  # glTF axes
    blender_pts = numpy.stack([pts[:, 0], -pts[:, 2], pts[:, 1]], axis=1)
    lo, hi = blender_pts.min(0), blender_pts.max(0)
    centre = mathutils.Vector(((lo + hi) / 2).tolist())
    height = float(max(hi[2] - lo[2], hi[0] - lo[0]))
    cam_data = bpy.data.cameras.new("cam")
    cam_data.lens = 50
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    distance = 1.25 * height / (2 * math.tan(cam_data.angle / 2))
    # The avatar faces glTF's +Z, which is Blender's -Y: the camera stands at -Y looking at +Y.
    cam.location = centre + mathutils.Vector((0.0, -distance, 0.15 * height))
    cam.rotation_euler = (centre - cam.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam
    sun = bpy.data.lights.new("sun", "SUN")
    sun.energy = 3.0
    light = bpy.data.objects.new("sun", sun)
    light.rotation_euler = (math.radians(50), 0.0, math.radians(-30))
    scene.collection.objects.link(light)
    scene.world = scene.world or bpy.data.worlds.new("world")
    scene.world.color = (0.25, 0.25, 0.28)
    scene.render.engine = "CYCLES"  # on the CPU: runs headless, without a display or GPU
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = 512
    scene.render.filepath = path
    bpy.ops.render.render(write_still=True)
    bpy.data.objects.remove(cam)
    bpy.data.objects.remove(light)


def main() -> None:
    args = sys.argv[sys.argv.index("--") + 1 :]
    prefix = None
    if "--render" in args:
        i = args.index("--render")
        prefix = args[i + 1]
        args = args[:i] + args[i + 2 :]
    path, fps, out = args[0], float(args[1]), args[2]
    frames = [int(a) for a in args[3:]]
    bpy.ops.object.select_all(action="SELECT")
    bpy.ops.object.delete()
    scene = bpy.context.scene
    scene.render.fps = max(1, round(fps))
    scene.render.fps_base = scene.render.fps / fps
    bpy.ops.import_scene.gltf(filepath=path)
    arms = [o for o in scene.objects if o.type == "ARMATURE"]
    meshes = [o for o in scene.objects if o.type == "MESH"]
    assert len(arms) == 1 and len(meshes) == 1, (arms, meshes)
    arm, mesh = arms[0], meshes[0]
    action = arm.animation_data.action if arm.animation_data is not None else None
    keys = sorted({kp.co[0] for fc in action.fcurves for kp in fc.keyframe_points}) if action else []
    per_curve = sorted({len(fc.keyframe_points) for fc in action.fcurves}) if action else []
    grouped = numpy.zeros(len(mesh.data.vertices), int)
    for v in mesh.data.vertices:
        grouped[v.index] = sum(1 for g in v.groups if g.weight > 0)
    report = {
        "bones": [b.name for b in arm.data.bones],
        "vertex_groups": [g.name for g in mesh.vertex_groups],
        "vertices": len(mesh.data.vertices),
        "max_groups_per_vertex": int(grouped.max()),
        "ungrouped_vertices": int((grouped == 0).sum()),
        "images": images_of(mesh),
        "action": action.name if action else None,
        "keys": keys,
        "keys_per_fcurve": per_curve,
        "modifiers": [m.type for m in mesh.modifiers],
        "scene_fps": scene.render.fps / scene.render.fps_base,
    }
    arrays = {}
    for k in frames:
        scene.frame_set(int(round(keys[k])))
        arrays[f"frame_{k}"] = world_coords(mesh)
    if prefix is not None:
        for k in frames[:2]:
            scene.frame_set(int(round(keys[k])))
            render(scene, arm, mesh, f"{prefix}_frame{k}.png")
    if action is not None:
        arm.animation_data.action = None  # the rest (bind) pose, undeformed
    for pb in arm.pose.bones:
        pb.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
        pb.location = (0.0, 0.0, 0.0)
    scene.frame_set(scene.frame_current)
    arrays["rest"] = world_coords(mesh)
    if prefix is not None:
        # A pose the clip never had: the left upper arm raised (about the armature's forward axis).
        bone = next(pb for pb in arm.pose.bones if pb.name == "LeftUpperArm")
        bone.rotation_mode = "XYZ"
        head = arm.matrix_world @ bone.head
        turn = mathutils.Matrix.Translation(head) @ mathutils.Matrix.Rotation(math.radians(-100), 4, "Y")
        bone.matrix = arm.matrix_world.inverted() @ turn @ mathutils.Matrix.Translation(-head) @ arm.matrix_world @ bone.matrix
        scene.frame_set(scene.frame_current)
        render(scene, arm, mesh, f"{prefix}_arm_raised.png")
    numpy.savez(out, **arrays)
    print("RESULT " + json.dumps(report))


main()
