"""The module-wide server fixture: the session's model served on an ephemeral loopback port."""

from __future__ import annotations

import pytest
from serve_helpers import start


@pytest.fixture(scope="module")
def server(hf_model):
    with start(hf_model) as s:
        yield s
