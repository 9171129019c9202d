import functools

import pytest

from tests.models.hf_references import CASES, build_reference


@pytest.fixture(scope="session")
def reference_for(tmp_path_factory):
    """name -> Reference, each built once per session (parity and export tests share them).
    Tests only read the reference directories; edits go to copies."""

    @functools.cache
    def build(name):
        return build_reference(name, tmp_path_factory.mktemp(name))

    return build


@pytest.fixture(scope="session", params=list(CASES))
def reference(request, reference_for):
    return reference_for(request.param)
