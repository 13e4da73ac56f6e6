"""`dln serve`: its options, its early errors, and a real server process started from the command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from dln.cli import main


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--model",
        "--served-model-name",
        "--program",
        "--reward",
        "--api-key",
        "--host",
        "--port",
        "--max-batch-size",
        "--batch-wait-ms",
        "--max-body-bytes",
    ):
        assert option in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--program", "x=no/such/program.json"], "no program file"),
        (["--program", "just-a-path.json"], "NAME=VALUE"),
        (["--reward", "r=no_such_module_anywhere:f"], "cannot import"),
        (["--model", "openai:m@http://127.0.0.1:1/v1"], "serves local models"),
    ],
)
def test_bad_options_fail_before_loading_the_model(capsys, argv, message):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dln: error:") and message in err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_program(path) -> list[str]:
    """A program.json in dln's format (when dln.program exists): the --program arguments serving it."""
    try:
        from dln.layers import LanguageLayer
        from dln.program import Program
    except ImportError:
        return []
    layer = LanguageLayer(prompt="Is the sentiment of this review positive or negative?")
    Program(model_uri="hf:default", output=layer, labels=["positive", "negative"]).save(path)
    return ["--program", f"mood={path}"]


@pytest.mark.slow
def test_dln_serve_runs_a_server(tmp_path):
    key, port = "cli-test-key-93b1", free_port()
    env = {**os.environ, "DLN_API_KEY": key}
    program_args = write_program(tmp_path / "program.json")
    command = [
        sys.executable,
        "-m",
        "dln",
        "serve",
        "--model",
        "hf:default",
        "--port",
        str(port),
        "--served-model-name",
        "smol",
        "--reward",
        "len=serving.reward_registry:length_reward",
        *program_args,
    ]
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    auth = {"Authorization": f"Bearer {key}"}
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        models = httpx.get(f"{url}/v1/models", headers=auth).json()
        assert [m["id"] for m in models["data"]] == ["smol"] + (["mood"] if program_args else [])
        body = {
            "model": "smol",
            "prompt": "Hi",
            "max_tokens": 3,
            "n": 2,
            "reward": "len",
            "temperature": 1,
            "seed": 0,
        }
        response = httpx.post(f"{url}/v1/completions", headers=auth, json=body, timeout=120)
        assert response.status_code == 200 and len(response.json()["choices"][0]["rewards"]) == 2
        if program_args:
            body = {"model": "mood", "prompt": "I loved every minute."}
            answer = httpx.post(f"{url}/v1/completions", headers=auth, json=body, timeout=120).json()
            assert answer["choices"][0]["text"] in ("positive", "negative")
    finally:
        process.terminate()
        process.wait(timeout=60)
    output = log.read_text()
    assert "smol" in output and key not in output
    if program_args:
        assert "answers with the served model" in output  # no second copy of the weights
