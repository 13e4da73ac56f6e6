"""`dln prepare --gguf FILE... --name NAME`: chunks joined in order, checksummed, described, converted."""

from __future__ import annotations

import hashlib
import json

import pytest

from dln.errors import DLNError


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    """The default model's GGUF file cut into three chunk files, and the whole file's sha256."""
    from dln.lm.default_model import gguf_path

    data = gguf_path().read_bytes()
    folder = tmp_path_factory.mktemp("chunks")
    third = len(data) // 3
    pieces = [data[:third], data[third : 2 * third], data[2 * third :]]
    files = []
    for i, piece in enumerate(pieces):
        files.append(folder / f"part{i + 1}.bin")
        files[-1].write_bytes(piece)
    return files, hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_chunks_become_a_named_model_that_hf_name_opens(chunks, tmp_path, monkeypatch):
    from dln.lm.gguf_import import MODEL_INFO, prepare_gguf
    from dln.lm.paths import resolve_model_path

    monkeypatch.setenv("DLN_HOME", str(tmp_path))
    files, digest = chunks
    with pytest.raises(DLNError, match="not the expected"):
        prepare_gguf(files, "smol", sha256="0" * 64)
    assert not (tmp_path / "models" / "smol").exists()
    target = prepare_gguf(files, "smol", sha256=digest)
    info = json.loads((target / MODEL_INFO).read_text())
    assert info["sha256"] == digest and info["parts"] == ["part1.bin", "part2.bin", "part3.bin"]
    assert info["architecture"] == "llama" and info["has_chat_template"] and info["license"] == "apache-2.0"
    assert info["size_bytes"] == sum(f.stat().st_size for f in files)
    assert resolve_model_path("hf:smol") == str(target)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no staging left behind

    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert prepare_gguf(files, "smol") == target  # same checksum: reused, not converted again
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(DLNError, match="already prepared as 'smol'"):
        prepare_gguf(files[:2] + files[2:] + files[2:], "smol")


def test_bad_parts_and_names_are_refused_before_any_work(chunks, tmp_path, monkeypatch):
    from dln.lm.gguf_import import prepare_gguf

    monkeypatch.setenv("DLN_HOME", str(tmp_path))
    files, _ = chunks
    with pytest.raises(DLNError, match="give the first part first"):
        prepare_gguf([files[1], files[0], files[2]], "smol")
    with pytest.raises(DLNError, match="does not exist"):
        prepare_gguf([tmp_path / "missing.gguf"], "smol")
    for name in ("default", "../escape", "a/b", ""):
        with pytest.raises(DLNError, match="not a usable model name"):
            prepare_gguf(files, name)
    with pytest.raises(DLNError, match="cannot read the GGUF header"):
        prepare_gguf(files[:1], "truncated")
