"""The models of a study: one model object per configuration, and weights read onto a run's mesh."""

from __future__ import annotations

import jax

from arch_compare import partitioning
from arch_compare.data.vocabularies import vocabulary_for_model
from arch_compare.execution import ExecutionConfig
from arch_compare.imitation.config import StudyModel
from arch_compare.models import build_model
from arch_compare.models.model import BaseModel


class StudyModels:
    """One model object per configuration for the whole study, so compiled decoding programs
    (cached per model object) are reused by every run of that model."""

    def __init__(self):
        self._built: dict = {}
        self._vocabularies: dict = {}

    def model(self, study_model: StudyModel, execution: ExecutionConfig) -> BaseModel:
        config = execution.apply(study_model.config)  # the run's dtypes and remat policy
        if config not in self._built:
            self._built[config] = build_model(config)
        return self._built[config]

    def vocabulary(self, study_model: StudyModel):
        key = (study_model.config.family, study_model.vocabulary)
        if key not in self._vocabularies:
            self._vocabularies[key] = vocabulary_for_model(study_model.config,
                                                           study_model.vocabulary)
        return self._vocabularies[key]


def params_from(path, model: BaseModel, execution: ExecutionConfig, what: str):
    """`model`'s weights from any checkpoint kind at `path`, read straight onto the run's mesh;
    `what` names them in the error when there is no checkpoint."""
    from arch_compare.models.loading import CheckpointError, load_params
    mesh = partitioning.make_mesh(execution.mesh, jax.devices()[:execution.mesh.num_devices])
    try:
        return load_params(model, path, shardings=partitioning.param_shardings(
            model.logical_axes(), model.abstract_params(), mesh))
    except CheckpointError as error:
        raise RuntimeError(f"{what}: no checkpoint to read ({error}); did that run "
                           f"finish?") from None
