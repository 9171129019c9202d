"""The tiny random Hugging Face models of tests/models, shared with the preference tests."""

import functools

import pytest

from tests.models.conftest import reference_for  # noqa: F401  (the session fixture itself)
from tests.models.hf_references import build_reference


@pytest.fixture(scope="session")
def frozen_reference_for(tmp_path_factory):
    """name -> Reference like `reference_for`'s but with other random weights (seed 1): the
    frozen DPO reference, different from the policy so its term in the loss matters."""

    @functools.cache
    def build(name):
        return build_reference(name, tmp_path_factory.mktemp(f"{name}-reference"), seed=1)

    return build
