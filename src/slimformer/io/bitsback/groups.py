"""Rotation-symmetric groups of a saved slimformer model.

A model in slim form computes the same function when the residual stream at any
point ``p`` (embeddings -> block inputs -> mid points -> block outputs -> head) is
expressed in another orthonormal basis ``x -> x @ R_p`` (``R_p: [k_p, k_p]``):

* everything that *reads* the stream at ``p`` (token / positional embeddings
  rows, q/k/v and gate/up (fc1) weights, the head) becomes ``W @ R_p``
  (axis 1 of ``[out, k_p]``);
* everything that *writes* it (o / down (fc2) weights ``[k_p, in]`` and their
  biases ``[k_p]``) becomes ``R_p.T @ W`` (axis 0);
* a residual shortcut from ``a`` to ``b`` (``[k_b, k_a]``) becomes ``R_b.T @ W @ R_a``;
* the norms are weightless :class:`SlimRMSNorm` s: ``x / rms(x)`` with a fixed
  divisor, and ``||x R|| = ||x||`` — they commute with any orthogonal ``R``.
  Reader biases live in the readers' *output* spaces and do not change.

A point without a shortcut shares its basis with the previous point (identity
residual), so such points are merged into one group (union-find).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Member:
    """A tensor in a group: ``axis`` is the residual axis (1 readers, 0 writers/biases)."""

    name: str
    axis: int


@dataclass
class Group:
    """One rotation-symmetric residual space of width ``k``.

    ``members``: tensors touching only this space (used for the canonical form);
    ``shortcuts``: ``(name, side)`` with ``side`` 'in' (axis 1) or 'out' (axis 0).
    """

    points: list[str]
    k: int
    members: list[Member] = field(default_factory=list)
    shortcuts: list[tuple[str, str]] = field(default_factory=list)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def rotation_groups(section: dict[str, Any] | None, shapes: dict[str, tuple[int, ...]]) -> list[Group]:
    """Groups of a saved model from its ``"slimformer"`` config section and tensor shapes.

    Returns ``[]`` when the model exposes no rotational symmetry (not a slimformer
    model, a plain export, or norms that still carry weights).
    """
    if not section or section.get("plain") or "plan" not in section:
        return []
    plan = section["plan"]
    paths, layout = plan["paths"], plan["layout"]
    layers = paths["layers"]
    norm_names = [layout.get("attn_norm"), layout.get("mlp_norm")]
    for key in shapes:  # a norm with a weight does not commute with rotations
        parts = key.split(".")
        if any(n and n in parts for n in norm_names) or key.startswith(paths["final_norm"] + "."):
            return []
    uf = _UnionFind()
    width: dict[str, int] = {}
    owned: dict[str, list[Member]] = {}
    shortcuts: list[tuple[str, str, str]] = []  # (tensor, point_in, point_out)

    def add(point: str, name: str, axis: int) -> None:
        if name in shapes:
            owned.setdefault(point, []).append(Member(name, axis))
            width.setdefault(point, shapes[name][axis])
            if shapes[name][axis] != width[point]:
                raise ValueError(f"tensor {name} has width {shapes[name][axis]} at {point}, expected {width[point]}")

    def reader(point: str, path: str | None, prefix: str = "") -> None:
        if path:
            add(point, f"{prefix}{path}.weight", 1)

    def writer(point: str, path: str, prefix: str) -> None:
        add(point, f"{prefix}{path}.weight", 0)
        add(point, f"{prefix}{path}.bias", 0)

    reader("embed", paths["embed"])
    reader("embed", paths.get("pos_embed"))
    prev = "embed"
    for i, bp in enumerate(plan["blocks"]):
        pre = f"{layers}.{i}."
        for p in ("q", "k", "v"):
            reader(prev, paths[p], pre)
        out = f"out{i}"
        if bp["d_mid"] is None:  # parallel block
            for p in ("gate", "up"):
                reader(prev, paths.get(p), pre)
            writer(out, paths["o"], pre)
            after_attn = out
        else:
            mid = f"mid{i}"
            writer(mid, paths["o"], pre)
            for p in ("gate", "up"):
                reader(mid, paths.get(p), pre)
            after_attn = mid
        writer(out, paths["down"], pre)
        for sc, a, b in (("attn_shortcut", prev, after_attn), ("mlp_shortcut", after_attn, out)):
            if a == b:
                continue
            name = f"{pre}{sc}.weight"
            if name in shapes:
                shortcuts.append((name, a, b))
            else:
                uf.union(a, b)  # identity residual: same basis on both sides
        prev = out
    reader(prev, paths["head"])
    groups: dict[str, Group] = {}
    for point in width:
        root = uf.find(point)
        g = groups.setdefault(root, Group(points=[], k=width[point]))
        if g.k != width[point]:
            raise ValueError(f"points {g.points + [point]} share a basis but have widths {g.k} and {width[point]}")
        g.points.append(point)
        g.members.extend(owned.get(point, []))
    for name, a, b in shortcuts:
        groups[uf.find(a)].shortcuts.append((name, "in"))
        groups[uf.find(b)].shortcuts.append((name, "out"))
    return list(groups.values())
