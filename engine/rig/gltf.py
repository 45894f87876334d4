"""Writing a rigged avatar as glTF 2.0 binary (.glb) with pygltflib.

The file: one scene with two root nodes, `Armature` (holding the joint hierarchy, root joint first) and
`Avatar` (the skinned mesh: POSITION, NORMAL, TEXCOORD_0 or COLOR_0, JOINTS_0 and WEIGHTS_0, one
primitive, a PBR material with the baked texture embedded as PNG); one skin whose inverse bind matrices
are the inverses of the joints' bind matrices; and, with a motion, one animation (`motion`) with a
translation and a rotation key per joint and frame, LINEAR, at the clip's frame rate. glTF is Y-up, +Z
forward, metres: our world's conventions, so nothing is converted. Matrices are stored column-major, as the
format requires.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pygltflib as g
from scipy.spatial.transform import Rotation

from engine.io.atomic import write_bytes
from engine.rig.rigged import RiggedAvatar

ARMATURE_NODE = "Armature"
MESH_NODE = "Avatar"
ANIMATION_NAME = "motion"
MAX_JOINTS_U8 = 256  # JOINTS_0 as unsigned bytes up to this many joints, else unsigned shorts


class _Blob:
    """The binary chunk: appends arrays as 4-byte aligned buffer views and describes them as accessors."""

    def __init__(self, gltf: g.GLTF2) -> None:
        self.gltf, self.data = gltf, bytearray()

    def view(self, raw: bytes, target: int | None = None) -> int:
        self.data += b"\0" * (-len(self.data) % 4)
        self.gltf.bufferViews.append(g.BufferView(buffer=0, byteOffset=len(self.data), byteLength=len(raw), target=target))
        self.data += raw
        return len(self.gltf.bufferViews) - 1

    def accessor(self, array: np.ndarray, kind: str, component: int, target: int | None = None,
                 bounds: bool = False, normalized: bool = False) -> int:
        array = np.ascontiguousarray(array)
        view = self.view(array.tobytes(), target)
        flat = array.reshape(len(array), -1)
        acc = g.Accessor(bufferView=view, componentType=component, count=len(array), type=kind,
                         normalized=normalized or None)
        if bounds:
            acc.min, acc.max = flat.min(0).tolist(), flat.max(0).tolist()
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1


def rigged_glb_bytes(rig: RiggedAvatar, with_animation: bool = True) -> bytes:
    """The .glb file of a rigged avatar (`with_animation`: include its motion, when it has one)."""
    gltf = g.GLTF2(asset=g.Asset(generator="Avatar Studio", version="2.0"), scene=0)
    blob = _Blob(gltf)
    sk = rig.skeleton
    b0 = 0  # joint b is node b0 + b; the armature and the mesh node follow
    local = rig.local_matrices(None)
    for b in range(sk.num_bones):
        children = [b0 + c for c, p in enumerate(sk.parents) if p == b]
        t, q = _decompose(local[b])
        gltf.nodes.append(g.Node(name=sk.names[b], translation=t.tolist(), rotation=q.tolist(),
                                 children=children or None))
    roots = [b0 + b for b, p in enumerate(sk.parents) if p < 0]
    armature = len(gltf.nodes)
    gltf.nodes.append(g.Node(name=ARMATURE_NODE, children=roots))
    mesh_node = len(gltf.nodes)
    gltf.nodes.append(g.Node(name=MESH_NODE, mesh=0, skin=0))
    gltf.scenes.append(g.Scene(name="avatar", nodes=[armature, mesh_node]))

    attributes = g.Attributes(
        POSITION=blob.accessor(rig.vertices.astype(np.float32), g.VEC3, g.FLOAT, g.ARRAY_BUFFER, bounds=True),
        NORMAL=blob.accessor(rig.normals.astype(np.float32), g.VEC3, g.FLOAT, g.ARRAY_BUFFER),
    )
    small = sk.num_bones <= MAX_JOINTS_U8
    attributes.JOINTS_0 = blob.accessor(rig.joints.astype(np.uint8 if small else np.uint16), g.VEC4,
                                        g.UNSIGNED_BYTE if small else g.UNSIGNED_SHORT, g.ARRAY_BUFFER)
    attributes.WEIGHTS_0 = blob.accessor(rig.weights.astype(np.float32), g.VEC4, g.FLOAT, g.ARRAY_BUFFER)
    material = g.Material(name="avatar", doubleSided=False,
                          pbrMetallicRoughness=g.PbrMetallicRoughness(metallicFactor=0.0, roughnessFactor=1.0))
    if rig.texture is not None and rig.uvs is not None:
        uv = np.stack([rig.uvs[:, 0], 1.0 - rig.uvs[:, 1]], axis=1).astype(np.float32)  # glTF: v from the top
        attributes.TEXCOORD_0 = blob.accessor(uv, g.VEC2, g.FLOAT, g.ARRAY_BUFFER)
        png = _png(rig.texture)
        gltf.images.append(g.Image(name="albedo", mimeType="image/png", bufferView=blob.view(png)))
        gltf.samplers.append(g.Sampler(magFilter=g.LINEAR, minFilter=g.LINEAR_MIPMAP_LINEAR, wrapS=g.CLAMP_TO_EDGE,
                                       wrapT=g.CLAMP_TO_EDGE))
        gltf.textures.append(g.Texture(sampler=0, source=0))
        material.pbrMetallicRoughness.baseColorTexture = g.TextureInfo(index=0)
    elif rig.colors is not None:
        attributes.COLOR_0 = blob.accessor(np.clip(rig.colors, 0.0, 1.0).astype(np.float32), g.VEC3, g.FLOAT,
                                           g.ARRAY_BUFFER)
    gltf.materials.append(material)
    indices = blob.accessor(rig.faces.astype(np.uint32).reshape(-1), g.SCALAR, g.UNSIGNED_INT,
                            g.ELEMENT_ARRAY_BUFFER)
    gltf.meshes.append(g.Mesh(name="avatar", primitives=[g.Primitive(attributes=attributes, indices=indices,
                                                                       material=0, mode=g.TRIANGLES)]))
    ibm = np.linalg.inv(rig.bind).transpose(0, 2, 1).astype(np.float32)  # column-major
    gltf.skins.append(g.Skin(name="avatar", joints=[b0 + b for b in range(sk.num_bones)], skeleton=roots[0],
                             inverseBindMatrices=blob.accessor(ibm, g.MAT4, g.FLOAT)))
    if with_animation and rig.num_frames > 0:
        _animation(gltf, blob, rig, b0)
    gltf.buffers.append(g.Buffer(byteLength=len(blob.data)))
    gltf.set_binary_blob(bytes(blob.data))
    return b"".join(gltf.save_to_bytes())


def write_rigged_glb(path: str | Path, rig: RiggedAvatar, with_animation: bool = True) -> Path:
    """Writes the .glb atomically; returns its path."""
    write_bytes(path, rigged_glb_bytes(rig, with_animation))
    return Path(path)


def _animation(gltf: g.GLTF2, blob: _Blob, rig: RiggedAvatar, b0: int) -> None:
    k = rig.num_frames
    times = blob.accessor((np.arange(k) / rig.fps).astype(np.float32), g.SCALAR, g.FLOAT, bounds=True)
    locals_ = np.stack([rig.local_matrices(i) for i in range(k)])  # [K, B, 4, 4]
    anim = g.Animation(name=ANIMATION_NAME)
    for b in range(rig.skeleton.num_bones):
        t = locals_[:, b, :3, 3].astype(np.float32)
        q = Rotation.from_matrix(locals_[:, b, :3, :3]).as_quat()  # [K, 4] x y z w
        flip = np.concatenate([[1.0], np.sign(np.sum(q[1:] * q[:-1], axis=1) + 1e-12)])
        q = (q * np.cumprod(flip)[:, None]).astype(np.float32)  # the short way between keys
        for path, values, kind in (("translation", t, g.VEC3), ("rotation", q, g.VEC4)):
            anim.samplers.append(g.AnimationSampler(input=times, output=blob.accessor(values, kind, g.FLOAT),
                                                    interpolation="LINEAR"))
            anim.channels.append(g.AnimationChannel(sampler=len(anim.samplers) - 1,
                                                    target=g.AnimationChannelTarget(node=b0 + b, path=path)))
    gltf.animations.append(anim)


def _decompose(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A rigid 4×4 → translation [3] and unit quaternion [4] (x y z w)."""
    return m[:3, 3].copy(), Rotation.from_matrix(m[:3, :3]).as_quat()


def _png(texture: np.ndarray) -> bytes:
    rgb = np.clip(np.round(np.asarray(texture) * 255.0), 0, 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()
