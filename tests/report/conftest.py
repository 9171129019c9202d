"""Fixtures for the report tests: the study of `fixture_study.py` in a database, and one report
written from it per test session (matplotlib takes a second or two; every test reads the same one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from arch_compare.report import write_report
from tests.report.fixture_study import build_study


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("study")
    build_study(directory / "results.sqlite")
    return directory


@pytest.fixture(scope="session")
def report(study_dir, tmp_path_factory):
    """(paths, html text, markdown text) of the one report every test reads."""
    paths = write_report(study_dir, tmp_path_factory.mktemp("report"))
    return paths, paths.html.read_text(encoding="utf-8"), paths.markdown.read_text(
        encoding="utf-8")
