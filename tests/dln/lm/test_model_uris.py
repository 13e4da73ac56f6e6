"""Every bad model URI is one clear DLNError (and one stderr line from the CLI), never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from dln import DLNError, load_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("default", "unknown model URI"),
        ("gpt:foo", "unknown model URI"),
        ("hf:", "unknown model URI"),
        ("hf:/no/such/model/dir", "does not exist"),
        ("hf:no-such-org/no-such-model", "never downloaded"),
        ("openai:modelonly", "openai:<model>@<base_url>"),
        ("openai:m@127.0.0.1:8000", "openai:<model>@<base_url>"),
    ],
)
def test_bad_uri_is_a_clear_error(uri, message):
    with pytest.raises(DLNError, match=message):
        load_model(uri, cache=False)


def test_a_directory_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(DLNError, match="config.json"):
        load_model(f"hf:{tmp_path}", cache=False)


def test_an_unreachable_server_is_a_clear_error():
    with pytest.raises(DLNError, match="cannot reach the server"):
        load_model(f"openai:default@http://127.0.0.1:{free_port()}/v1", cache=False)


@pytest.mark.parametrize("uri", ["nope:x", "hf:/no/such/dir", f"openai:m@http://127.0.0.1:{free_port()}/v1"])
def test_cli_prints_one_line_and_exits_2(uri):
    result = subprocess.run(
        [sys.executable, "-m", "dln", "generate", "--model", uri, "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dln: error:")
