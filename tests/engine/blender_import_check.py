"""Imports a textured OBJ and a .glb in Blender and reports what arrived (run by test_textured_mesh.py).

    blender -b --factory-startup --python-exit-code 1 --python tests/engine/blender_import_check.py -- \
        MESH.obj MESH.glb

For each file: the imported mesh objects, their face count, their UVs (every face corner, v up as
Blender keeps them), and the images reachable from an Image Texture node linked to the material's
Base Color. Prints one line `RESULT {json}`; any failure raises, and Blender then exits with 1.
"""

import json
import sys

import bpy
import numpy

# Debian's Blender 3.4 glTF importer still calls numpy.bool, which Debian's numpy 1.24 no longer has.
if "bool" not in numpy.__dict__:
    numpy.bool = bool


def imported(path: str) -> dict:
    bpy.ops.object.select_all(action="SELECT")
    bpy.ops.object.delete()
    if path.endswith(".obj"):
        bpy.ops.import_scene.obj(filepath=path)
    else:
        bpy.ops.import_scene.gltf(filepath=path)
    objects = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    out = []
    for o in objects:
        mesh = o.data
        uvs = []
        if mesh.uv_layers.active is not None:
            flat = [0.0] * (2 * len(mesh.loops))
            mesh.uv_layers.active.data.foreach_get("uv", flat)
            uvs = [flat[i : i + 2] for i in range(0, len(flat), 2)]
        images = []
        for slot in o.material_slots:
            material = slot.material
            if material is None or not material.use_nodes:
                continue
            for node in material.node_tree.nodes:
                if node.type != "BSDF_PRINCIPLED":
                    continue
                for link in node.inputs["Base Color"].links:
                    source = link.from_node
                    if source.type == "TEX_IMAGE" and source.image is not None:
                        images.append({"size": list(source.image.size), "material": material.name})
        out.append({"faces": len(mesh.polygons), "uv_layers": len(mesh.uv_layers), "uvs": uvs, "images": images})
    return {"objects": out}


def main() -> None:
    paths = sys.argv[sys.argv.index("--") + 1 :]
    print("RESULT " + json.dumps({p: imported(p) for p in paths}))


main()
