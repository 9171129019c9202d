"""Execution settings: how a run is laid out on the devices, never what it computes.

One frozen type serves every command that runs a model — `train`, `eval`, `infer`, `serve` and the
study — so a study's run is executed exactly as a hand-written run with the same settings:

    ExecutionConfig(mesh={"fsdp": 4, "tensor": 2}, dtype="bfloat16", remat="block",
                    microbatches=4)
    ExecutionConfig(mesh="auto")  # the smallest fsdp (then tensor) the memory estimate fits

- `mesh`: sizes of the (data, fsdp, tensor) axes (`partitioning.MeshConfig`, or a dict of them;
  axes left out are 1), or `"auto"`, resolved per run by `resolve_mesh` from the budget module's
  per-device memory estimate and the devices present.
- `dtype` / `param_dtype`: the compute (activation) dtype and the dtype parameters are held in.
- `remat`: rematerialisation policy of each block (`models.config.REMAT_CHOICES`).
- `microbatches`: gradient accumulation; the global batch is split into this many steps' worth.

These are not fairness differences between the models of a study (the report prints them beside
each run, apart from the configuration differences it flags).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping

from arch_compare.configs import from_fields
from arch_compare.models.config import DTYPES, REMAT_CHOICES, ModelConfig
from arch_compare.partitioning import MESH_AXES, MeshConfig

AUTO = "auto"


def _mesh_from(value: Any, where: str) -> MeshConfig | str:
    if value == AUTO or isinstance(value, MeshConfig):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(MESH_AXES))
        if unknown:
            raise ValueError(f"{where}.mesh: unknown axis {', '.join(map(repr, unknown))}; mesh "
                             f"axes are {', '.join(MESH_AXES)}")
        try:
            return MeshConfig(**value)
        except ValueError as error:
            raise ValueError(f"{where}.mesh: {error}") from None
    raise ValueError(f"{where}.mesh: expected {AUTO!r} or a dict of axis sizes such as "
                     f"{{'fsdp': 4, 'tensor': 2}}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    mesh: MeshConfig | str = MeshConfig()
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    microbatches: int = 1

    def __post_init__(self):
        object.__setattr__(self, "mesh", _mesh_from(self.mesh, "execution"))
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"execution.{name}={getattr(self, name)!r} is not one of "
                                 f"{', '.join(DTYPES)}")
        if self.remat not in REMAT_CHOICES:
            raise ValueError(f"execution.remat={self.remat!r} is not one of "
                             f"{', '.join(REMAT_CHOICES)}")
        if (isinstance(self.microbatches, bool) or not isinstance(self.microbatches, int)
                or self.microbatches <= 0):
            raise ValueError(f"execution.microbatches must be a positive int, got "
                             f"{self.microbatches!r}")

    @classmethod
    def coerce(cls, value: Any, where: str = "execution") -> "ExecutionConfig":
        """An ExecutionConfig from itself, None (the defaults) or a dict of its fields."""
        if value is None:
            return cls()
        try:
            return from_fields(value, cls, where)
        except ValueError as error:
            raise ValueError(f"{where}: {error}".replace(f"{where}: execution.", f"{where}.")) \
                from None

    def override(self, changes: Mapping[str, Any] | None, where: str = "execution"
                 ) -> "ExecutionConfig":
        """These settings with some replaced (a model's own overrides in a study)."""
        if not changes:
            return self
        return ExecutionConfig.coerce({**self.to_fields(), **dict(changes)}, where)

    @property
    def auto_mesh(self) -> bool:
        return self.mesh == AUTO

    def apply(self, config: ModelConfig) -> ModelConfig:
        """The model configuration these settings run: dtypes and remat policy set."""
        return config.replace(dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat)

    def with_mesh(self, mesh: MeshConfig) -> "ExecutionConfig":
        return dataclasses.replace(self, mesh=mesh)

    def to_fields(self) -> dict:
        return {"mesh": self.mesh, "dtype": self.dtype, "param_dtype": self.param_dtype,
                "remat": self.remat, "microbatches": self.microbatches}

    def to_dict(self) -> dict:
        """JSON-ready: the mesh as {axis: size} or "auto"."""
        mesh = self.mesh if self.auto_mesh else dataclasses.asdict(self.mesh)
        return {**self.to_fields(), "mesh": mesh}

    def describe(self) -> str:
        """One line for tables: `fsdp 4 x tensor 2, bfloat16 (params float32), remat block`."""
        mesh = AUTO if self.auto_mesh else mesh_description(self.mesh)
        dtypes = (self.dtype if self.dtype == self.param_dtype
                  else f"{self.dtype} (params {self.param_dtype})")
        parts = [mesh, dtypes, f"remat {self.remat}"]
        if self.microbatches > 1:
            parts.append(f"{self.microbatches} microbatches")
        return ", ".join(parts)


def mesh_description(mesh: MeshConfig) -> str:
    """`fsdp 4 x tensor 2` (axes of size 1 left out; one device: `1 device`)."""
    parts = [f"{axis} {size}" for axis, size in zip(MESH_AXES, mesh.shape) if size > 1]
    return " x ".join(parts) or "1 device"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_meshes(num_devices: int) -> Iterator[MeshConfig]:
    """Meshes over exactly `num_devices`, in the order `'auto'` tries them: tensor parallelism
    only when no fsdp split fits (it costs an all-reduce per block), and within each tensor size
    the smallest fsdp (the rest of the devices go to data parallelism, which gathers nothing)."""
    for tensor in _divisors(num_devices):
        for fsdp in _divisors(num_devices // tensor):
            yield MeshConfig(data=num_devices // (tensor * fsdp), fsdp=fsdp, tensor=tensor)


class NoMeshFits(ValueError):
    """No mesh over the devices present holds the run; the message gives the numbers."""


def resolve_mesh(execution: ExecutionConfig, num_devices: int,
                 fits: Callable[[MeshConfig], bool], describe_shortfall: Callable[[], str]
                 ) -> MeshConfig:
    """The mesh a run uses: the configured one, or for `'auto'` the first of
    `candidate_meshes(num_devices)` for which `fits(mesh)` (the caller's memory and batch checks)
    holds. `describe_shortfall()` explains why none does."""
    if not execution.auto_mesh:
        return execution.mesh
    for mesh in candidate_meshes(num_devices):
        if fits(mesh):
            return mesh
    raise NoMeshFits(f"execution.mesh='auto': no mesh over {num_devices} devices fits; "
                     f"{describe_shortfall()}")
