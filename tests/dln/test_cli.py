"""The `dln` command line on the real default model: JSON lines out, the same numbers as the Python API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dln import __version__


def dln(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dln", *args], capture_output=True, text=True, input=stdin, timeout=300
    )


def test_version_and_help():
    assert dln("--version").stdout.strip() == f"dln {__version__}"
    help_text = dln("--help").stdout
    for command in ("generate", "score", "classify", "prepare"):
        assert command in help_text
    assert "(default: hf:default)" in dln("score", "--help").stdout.replace("\n", " ").replace("  ", " ")


def test_score_and_classify_print_the_api_numbers(hf_model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"context": "The capital of France is", "continuation": " Paris"}) + "\n")
    result = dln("score", "--no-cache", "--input", str(pairs), "--context", "2 + 2 =", "--continuation", " 4")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    expected = hf_model.score(["2 + 2 =", "The capital of France is"], [" 4", " Paris"])
    for record, want in zip(records, expected):
        assert record["token_logprobs"] == pytest.approx(want, abs=1e-4)
        assert record["logprob"] == pytest.approx(sum(want), abs=1e-4)

    result = dln("classify", "--no-cache", "--label", " yes", "--label", " no", "Is the sky blue? Answer:")
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    want = hf_model.classify(["Is the sky blue? Answer:"], [" yes", " no"])[0]
    assert [record["logprobs"][" yes"], record["logprobs"][" no"]] == pytest.approx(want.tolist(), abs=1e-4)


def test_generate_reads_chat_prompts_from_stdin(hf_model, tmp_path):
    messages = [{"role": "user", "content": "Name one colour."}]
    result = dln(
        "generate",
        "--cache",
        str(tmp_path / "c.sqlite"),
        "--max-tokens",
        "8",
        "--input",
        "-",
        stdin=json.dumps({"prompt": messages}) + "\n",
    )
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["completions"] == hf_model.generate([messages], max_tokens=8)[0]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("score", "--context", "a"), None, "as many --continuation"),
        (("generate", "--input", "-"), "{not json\n", "line 1: not valid JSON"),
        (("generate", "--input", "-"), '{"text": "hi"}\n', "missing field(s) prompt"),
        (("generate", "--input", "/no/such/file.jsonl"), None, "does not exist"),
        (("generate",), None, "no prompts"),
    ],
)
def test_bad_input_is_one_clear_line(args, stdin, message):
    result = dln(*args, "--no-cache", stdin=stdin)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--gguf", "model.gguf"), "give both --gguf"),
        (("--gguf", "/no/such/model.gguf", "--name", "m"), "does not exist"),
    ],
)
def test_prepare_refuses_bad_gguf_arguments(args, message):
    result = dln("prepare", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_eval_names_a_user_task_after_its_directory_or_name(tmp_path, capsys):
    from dln.cli import main

    rows = [
        {"input": f"review {i}: {'great' if i % 2 else 'awful'}", "target": "yes" if i % 2 else "no"}
        for i in range(4)
    ]
    for folder in ("reviews", "other"):
        (tmp_path / folder).mkdir()
        for split in ("train", "dev", "test"):
            (tmp_path / folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = [f"--{s}={tmp_path / 'reviews' / f'{s}.jsonl'}" for s in ("train", "dev", "test")]
    run = tmp_path / "run"
    assert main(["train", *files, "--iterations", "0", "--quiet", "--no-cache", "--out", str(run)]) == 0

    def task_of(*extra: str) -> str:
        capsys.readouterr()
        assert main(["eval", "--run", str(run), "--no-cache", *extra]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["task"]

    assert task_of() == "reviews"
    assert task_of("--data", str(tmp_path / "other" / "test.jsonl")) == "other"
    assert task_of("--name", "my-reviews") == "my-reviews"
