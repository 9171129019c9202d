"""Read one study out of a results database into memory, and close the database.

The report works on this snapshot only, so a study still writing to the file cannot change the
numbers half-way through a report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from arch_compare.results import (DATABASE_FILE, Collection, Comparison, Metric, ResultsStore,
                                  Run, Sample, Study)


@dataclasses.dataclass(frozen=True)
class StudyData:
    database: Path
    study: Study
    runs: tuple[Run, ...]
    metrics: tuple[Metric, ...]
    samples: tuple[Sample, ...]
    comparisons: tuple[Comparison, ...] = ()  # paired bootstrap between runs (imitation vs base)
    collections: tuple[Collection, ...] = ()  # the target's answers bought: estimated and spent


def database_path(source: str | Path) -> Path:
    """The database file behind `source`: the file itself, or `results.sqlite` in a study folder."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such study directory or results database")
    if source.is_dir():
        path = source / DATABASE_FILE
        if not path.is_file():
            # Opening a missing file would create an empty database: refuse instead.
            raise FileNotFoundError(f"{source}: no results database ({DATABASE_FILE}) in this "
                                    f"directory")
        return path
    return source


def load_study(source: str | Path, study: str | None = None) -> StudyData:
    """Everything the report needs about one study; `study` may be omitted when there is one."""
    path = database_path(source)
    with ResultsStore(path, read_only=True) as store:  # a report never changes its source
        studies = store.studies()
        if study is None:
            if not studies:
                raise ValueError(f"{path}: holds no study yet")
            if len(studies) > 1:
                names = ", ".join(s.name for s in studies)
                raise ValueError(f"{path}: holds {len(studies)} studies ({names}); choose one "
                                 f"with --study NAME")
            chosen = studies[0]
        else:
            chosen = store.study(study)  # an unknown name raises, listing the known ones
        return StudyData(database=path, study=chosen, runs=tuple(store.runs(chosen.name)),
                         metrics=tuple(store.metrics(chosen.name)),
                         samples=tuple(store.samples(chosen.name)),
                         comparisons=tuple(store.comparisons(chosen.name)),
                         collections=tuple(store.collections(chosen.name)))
