"""Configs and task data: every malformed input is a DLNError naming the file, line or key and the fix."""

from __future__ import annotations

import json
import re

import pytest

from dln import DLNError
from dln.config import build_config, load_config, parse_overrides
from dln.data.loading import load_task
from dln.train_config import PRESETS, TrainConfig, apply_preset


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(path, rows: list[dict]):
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def test_yaml_and_overrides_are_typed(tmp_path):
    config = load_config(
        TrainConfig,
        write(tmp_path / "c.yaml", "task: topic\niterations: 3\n"),
        parse_overrides(["--batch-size", "7", "--backward_temperature=0.5", "--dev-size", "0"]),
    )
    assert (config.task, config.iterations, config.batch_size, config.backward_temperature) == (
        "topic",
        3,
        7,
        0.5,
    )


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("task: topic\nbogus_key: 1\n", {}, "unknown key(s) bogus_key"),
        ("task: topic\nmodel: [unclosed\n", {}, "not valid YAML"),
        ("- a list\n", {}, "must be a mapping"),
        ("iterations: many\n", {}, "iterations: expected an integer"),
        ("", {"iterations": "2.5"}, "expected an integer"),
        ("method: dln9\n", {}, "method 'dln9' is unknown"),
        ("batch_size: 0\n", {}, "batch_size must be at least 1"),
        ("decode_dtype: bf16\n", {}, "decode_dtype must be one of bfloat16"),
        ("model: openai:m@http://127.0.0.1:1/v1\ndecode_dtype: bfloat16\n", {}, "applies to hf: models only"),
        ("dtype: half\n", {}, "dtype must be one of bfloat16, float16, float32, got 'half'"),
        ("model: openai:m@http://127.0.0.1:1/v1\ndtype: bfloat16\n", {}, "dtype applies to hf: models only"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, overrides, message):
    with pytest.raises(DLNError, match=re.escape(message)):
        load_config(TrainConfig, write(tmp_path / "c.yaml", text), overrides)


def test_preset_resizes_the_file_but_flags_win():
    values = apply_preset({"iterations": 20, "batch_size": 20}, {"preset": "light", "batch_size": "5"})
    config = build_config(TrainConfig, values)
    assert config.iterations == PRESETS["light"]["iterations"] and config.batch_size == 5
    with pytest.raises(DLNError, match="preset 'huge'"):
        apply_preset({}, {"preset": "huge"})


def test_shipped_task_loads_with_its_label_set():
    task = load_task("sentiment")
    assert set(task.labels) == {"good", "bad"} and len(task.test) == 100


def test_user_files_with_row_labels(tmp_path):
    rows = [
        {"input": "2+2?", "target": "B", "labels": ["A", "B"]},
        {"input": "3+3?", "target": "C", "labels": ["A", "B", "C"]},
    ]
    task = load_task(train=jsonl(tmp_path / "t.jsonl", rows), dev=jsonl(tmp_path / "d.jsonl", rows))
    assert task.labels == ["A", "B", "C"]


def test_csv_files_load(tmp_path):
    path = write(tmp_path / "t.csv", "input,target\ngreat,good\nawful,bad\n")
    task = load_task(train=path, dev=path)
    assert task.labels == ["good", "bad"] and list(task.train["input"]) == ["great", "awful"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ('{"input": "a"}\n', "missing column(s) target"),
        (
            '{"input": "a", "target": "x", "labels": ["y", "z"]}\n',
            "line 1: target 'x' is not in the label set",
        ),
        ('{"input": "a", "target": ""}\n', "line 1: empty target"),
        ("not json at all\n", "cannot be read as JSON"),
    ],
)
def test_bad_data_files_name_file_line_and_fix(tmp_path, content, message):
    path = write(tmp_path / "bad.jsonl", content)
    good = jsonl(tmp_path / "good.jsonl", [{"input": "a", "target": "y"}])
    with pytest.raises(DLNError) as err:
        load_task(train=path, dev=good)
    assert message in str(err.value) and "bad.jsonl" in str(err.value)


def test_missing_files_and_tasks(tmp_path):
    with pytest.raises(DLNError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(DLNError, match="does not exist"):
        load_task(train=str(tmp_path / "missing.jsonl"), dev=str(tmp_path / "missing.jsonl"))
    with pytest.raises(DLNError, match="no dev data"):
        load_task(train=jsonl(tmp_path / "t.jsonl", [{"input": "a", "target": "b"}]))


@pytest.mark.parametrize(
    "old, new",
    [
        ("configs/reasoning/gone.yaml", "configs/reason/gone.yaml"),
        ("configs/vbon/gone.yaml", "configs/bon/gone.yaml"),
    ],
)
def test_an_old_config_path_names_the_new_one(old, new):
    with pytest.raises(DLNError, match=f"moved to {new}"):
        load_config(TrainConfig, old)


def test_a_user_task_is_named_after_its_directory_when_its_files_are_named_after_splits(tmp_path):
    rows = [{"input": "2+2?", "target": "B", "labels": ["A", "B"]}]
    (tmp_path / "reviews").mkdir()
    named = load_task(
        train=jsonl(tmp_path / "reviews" / "train.jsonl", rows), dev=jsonl(tmp_path / "d.jsonl", rows)
    )
    assert named.name == "reviews"
    assert load_task(
        train=jsonl(tmp_path / "mine_train.jsonl", rows), dev=jsonl(tmp_path / "d.jsonl", rows)
    ).name == ("mine_train")
