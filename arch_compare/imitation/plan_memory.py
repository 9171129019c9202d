"""A study's memory plan before anything runs: each run's execution settings (the mesh `'auto'`
resolves to, dtypes, remat, microbatches) and the budget module's per-device memory estimate for
its training and its evaluation, against the device's memory: `arch-compare study --plan`, and
the check the runner makes before each run's first step (`run_memory`).
"""

from __future__ import annotations

import dataclasses

from arch_compare.budget import memory as memory_lib
from arch_compare.budget.hardware import get_chip
from arch_compare.execution import ExecutionConfig, NoMeshFits, mesh_description, resolve_mesh
from arch_compare.imitation.config import StudyConfig
from arch_compare.imitation.plan import PlannedRun, plan, training_shape
from arch_compare.partitioning import MeshConfig
from arch_compare.recipes import FULL, Recipe

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Devices:
    """What a run is laid out on: how many devices, and the memory of each (None: unknown)."""

    count: int
    memory_bytes: float | None
    kind: str

    @classmethod
    def of_budget(cls, config: StudyConfig) -> "Devices":
        """The study's priced hardware: `budget.chips` of `budget.hardware` (HBM from
        budgets/hardware.yaml). Without `budget.chips`, an explicit mesh's size, else one."""
        chip = get_chip(config.budget.hardware)
        count = config.budget.chips
        if count is None:
            meshes = [config.execution_for(m).mesh for m in config.models]
            count = max((m.num_devices for m in meshes if isinstance(m, MeshConfig)), default=1)
        return cls(count, chip.hbm_bytes, chip.name)


@dataclasses.dataclass(frozen=True)
class RunMemory:
    """A run's execution settings and its per-device memory (bytes) against the device's."""

    run_id: str
    model: str
    execution: ExecutionConfig  # the mesh resolved (never 'auto') unless `shortfall` says why
    training_bytes: int | None  # None: the run does not train
    evaluation_bytes: int | None  # None: not estimable (see shortfall)
    device_bytes: float | None
    shortfall: str | None = None  # why it does not fit (None: it fits, or memory is unknown)

    @property
    def fits(self) -> bool:
        return self.shortfall is None


def _usable(device_bytes: float | None) -> float | None:
    return None if device_bytes is None else device_bytes * memory_lib.USABLE_HBM_FRACTION


def _training_shortfall(cfg, mesh: MeshConfig, lengths, batch: int, optimizer: str,
                        microbatches: int, devices: Devices, recipe: Recipe) -> str | None:
    """None when a training step fits one device of `devices`, else the budget module's
    explanation (MemoryShortfall) of what is missing and what would fit."""
    try:
        memory_lib.check_training_fits(cfg, mesh, lengths["inputs"], lengths["targets"], batch,
                                       optimizer, microbatches, devices.memory_bytes,
                                       recipe=recipe)
    except ValueError as shortfall:  # MemoryShortfall, or a batch that does not split
        return str(shortfall)
    return None


def _inference_bytes(cfg, mesh: MeshConfig, config: StudyConfig) -> int:
    lengths = config.eval_feature_lengths
    return memory_lib.per_device_inference_memory(
        cfg, mesh, lengths["inputs"], config.decode_max_tokens, config.eval_batch_size).total


def _evaluation_shortfall(cfg, mesh: MeshConfig, config: StudyConfig,
                          devices: Devices) -> str | None:
    try:
        needed = _inference_bytes(cfg, mesh, config)
    except ValueError as error:  # the evaluation batch does not split over the mesh
        return f"evaluation: {error} (eval_batch_size)"
    usable = _usable(devices.memory_bytes)
    if usable is not None and needed > usable:
        return (f"evaluation needs {needed / GIB:.2f} GiB per device on "
                f"{mesh_description(mesh)}, more than the {usable / GIB:.2f} GiB usable of a "
                f"{devices.kind} ({memory_lib.USABLE_HBM_FRACTION:.0%} of its memory); a larger "
                f"fsdp or tensor axis, or a smaller eval_batch_size, would fit")
    return None


def run_memory(config: StudyConfig, planned: PlannedRun, devices: Devices) -> RunMemory:
    """`planned`'s execution settings resolved over `devices` and its memory checked: the same
    check the plan prints and the runner makes before each run's first step."""
    model = planned.model
    execution = config.execution_for(model)
    cfg = execution.apply(model.config)
    trains = planned.steps > 0
    lengths, batch, optimizer = training_shape(config, planned)
    recipe = planned.recipe or FULL  # lora: frozen weights, adapters' optimizer state only

    def shortfall(mesh: MeshConfig) -> str | None:
        if mesh.num_devices > devices.count:
            return (f"the mesh {mesh_description(mesh)} needs {mesh.num_devices} devices; "
                    f"{devices.count} {devices.kind} are there")
        return ((trains and _training_shortfall(cfg, mesh, lengths, batch, optimizer,
                                                execution.microbatches, devices, recipe))
                or _evaluation_shortfall(cfg, mesh, config, devices))

    try:
        mesh = resolve_mesh(execution, devices.count, lambda m: shortfall(m) is None,
                            lambda: shortfall(MeshConfig(fsdp=devices.count)) or "")
    except NoMeshFits as error:
        return RunMemory(planned.run.run_id, model.name, execution, None, None,
                         devices.memory_bytes, str(error))
    resolved = execution.with_mesh(mesh)
    problem = shortfall(mesh)
    training = evaluation_bytes = None
    try:  # the estimates, also for a mesh that does not fit (the table shows by how much)
        if trains:
            training = memory_lib.per_device_training_memory(
                cfg, mesh, lengths["inputs"], lengths["targets"], batch, optimizer,
                execution.microbatches, recipe=recipe).total
        evaluation_bytes = _inference_bytes(cfg, mesh, config)
    except ValueError:  # a batch does not split over the mesh: the shortfall says so
        pass
    return RunMemory(planned.run.run_id, model.name, resolved, training, evaluation_bytes,
                     devices.memory_bytes, problem or None)


def memory_plan(config: StudyConfig, devices: Devices | None = None,
                planned: list[PlannedRun] | None = None) -> list[RunMemory]:
    """Every model run's execution and memory (the target runs elsewhere: left out)."""
    devices = Devices.of_budget(config) if devices is None else devices
    planned = plan(config) if planned is None else planned
    return [run_memory(config, item, devices) for item in planned if item.model is not None]


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def memory_table(config: StudyConfig, rows: list[RunMemory], devices: Devices) -> str:
    """The memory plan as text: one line per run, then every shortfall in full."""
    device = "unknown" if devices.memory_bytes is None else f"{devices.memory_bytes / GIB:.1f}"
    lines = [f"Memory plan of study {config.name!r} on {devices.count} x {devices.kind} "
             f"({device} GiB each, {memory_lib.USABLE_HBM_FRACTION:.0%} usable; budget module "
             f"per-device estimates, GiB):",
             f"  {'run':<46} {'mesh':<22} {'dtype':<9} {'params':<9} {'remat':<12} "
             f"{'micro':>5} {'train':>7} {'eval':>7} {'device':>7}  fits"]
    for row in rows:
        ex = row.execution
        mesh = "auto (none fits)" if ex.auto_mesh else mesh_description(ex.mesh)
        lines.append(f"  {row.run_id:<46} {mesh:<22} {ex.dtype:<9} {ex.param_dtype:<9} "
                     f"{ex.remat:<12} {ex.microbatches:>5} {_gib(row.training_bytes):>7} "
                     f"{_gib(row.evaluation_bytes):>7} {_gib(row.device_bytes):>7}  "
                     f"{'yes' if row.fits else 'NO'}")
    misfits = [row for row in rows if not row.fits]
    for row in misfits:
        lines.append(f"  does not fit: {row.run_id}: {row.shortfall}")
    lines.append(f"  {len(rows) - len(misfits)} of {len(rows)} runs fit"
                 + ("" if not misfits else "; change the execution settings of "
                    + ", ".join(sorted({row.model for row in misfits}))))
    return "\n".join(lines)
