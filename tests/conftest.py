import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from frameworks import HARNESSES, needs  # noqa: E402


@pytest.fixture(params=["torch", "mxnet"])
def h(request):
    """The harness of each framework in turn, so a behaviour test is written once for both;
    a framework that is not installed skips its half."""
    needs(request.param)
    return HARNESSES[request.param]()
