"""The (data, fsdp, tensor) mesh as plain data: its axis names and sizes, without JAX.

`arch_compare.partitioning` turns a `MeshConfig` into a device mesh and shardings; pricing a run
(`arch_compare.budget`) only needs the sizes, and does not wait for JAX to import to get them.
"""

from __future__ import annotations

import dataclasses
import math

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the three mesh axes; their product is the number of devices the mesh spans."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        for name in MESH_AXES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MeshConfig.{name} must be a positive int, got {value!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(getattr(self, name) for name in MESH_AXES)

    @property
    def num_devices(self) -> int:
        return math.prod(self.shape)
