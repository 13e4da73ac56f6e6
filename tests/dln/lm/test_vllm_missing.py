"""Without vllm installed, a `vllm:` URI fails with one line that says what to install."""

from __future__ import annotations

import importlib.util

import pytest

import dln
from dln.errors import DLNError


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_uri_without_vllm_says_how_to_install():
    with pytest.raises(DLNError) as info:
        dln.load_model("vllm:default", cache=False)
    message = str(info.value)
    assert "pip install 'dln[vllm]'" in message and "make vllm-venv" in message
    assert "\n" not in message
