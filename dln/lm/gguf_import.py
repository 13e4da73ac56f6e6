"""Any GGUF file a user has -> a named model directory that `hf:NAME` opens everywhere.

`dln prepare --gguf FILE [FILE ...] --name NAME` concatenates the files in the order given (a model split
into package-sized chunks), checksums the assembled file (sha256), records its metadata (architecture,
size, chat template, licence field) in `gguf.json` beside the weights, and converts it exactly as the
built-in default is converted (`default_model.convert_gguf`: dequantised fp32 safetensors, written under a
temporary name and renamed, so a killed run leaves nothing half-written). Preparing the same name again
with the same checksum reuses the directory; a different file under a taken name is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from dln.errors import DLNError
from dln.home import dln_home

MODEL_INFO = "gguf.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
GGUF_MAGIC = b"GGUF"
CHUNK = 1 << 24


@dataclass(frozen=True)
class GGUFInfo:
    """What a prepared model was made from: enough to tell two files apart and to know what you run."""

    sha256: str
    size_bytes: int
    parts: list[str]
    architecture: str
    model_name: str
    license: str
    has_chat_template: bool
    tensor_count: int


def prepared_model_dir(name: str) -> Path:
    return dln_home() / "models" / name


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name) or name == "default":
        raise DLNError(
            f"--name {name!r} is not a usable model name: use letters, digits, '.', '_' or '-' (at most 64, "
            "not 'default'), e.g. --name qwen-0.5b"
        )
    return name


def prepare_gguf(files: list[str | Path], name: str, sha256: str | None = None) -> Path:
    """Assemble, checksum, describe and convert `files` into `$DLN_HOME/models/NAME` (idempotent)."""
    from dln.lm.default_model import convert_gguf

    check_name(name)
    parts = [_checked_part(Path(f), first=i == 0) for i, f in enumerate(files)]
    if not parts:
        raise DLNError("--gguf needs at least one file")
    target = prepared_model_dir(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-gguf-", dir=target.parent) as scratch:
        source, digest = _assemble(parts, Path(scratch) / f"{name}.gguf")
        if sha256 and digest != sha256.lower():
            raise DLNError(
                f"the assembled GGUF has sha256 {digest}, not the expected {sha256}: a part is missing, "
                "corrupt or out of order (give the files in order)"
            )
        if (target / "config.json").is_file():
            return _reuse(target, digest)
        info = read_gguf_info(source, digest, [p.name for p in parts])
        record = json.dumps(asdict(info), indent=2) + "\n"
        convert_gguf(source, target, extra_files={MODEL_INFO: record})
    return target


def _checked_part(path: Path, first: bool) -> Path:
    path = path.expanduser()
    if not path.is_file():
        raise DLNError(f"GGUF file {path} does not exist")
    if first:
        with path.open("rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                raise DLNError(
                    f"{path} is not a GGUF file (it does not start with 'GGUF'); give the first part first"
                )
    return path


def _assemble(parts: list[Path], joined: Path) -> tuple[Path, str]:
    """One part is used in place; several are concatenated in order. Either way the sha256 is of the whole."""
    digest = hashlib.sha256()
    out = joined.open("wb") if len(parts) > 1 else None
    try:
        for part in parts:
            with part.open("rb") as handle:
                while block := handle.read(CHUNK):
                    digest.update(block)
                    if out is not None:
                        out.write(block)
    finally:
        if out is not None:
            out.close()
    return (joined if out is not None else parts[0]), digest.hexdigest()


def _reuse(target: Path, digest: str) -> Path:
    recorded = target / MODEL_INFO
    previous = json.loads(recorded.read_text()).get("sha256") if recorded.is_file() else None
    if previous != digest:
        raise DLNError(
            f"a different model is already prepared as {target.name!r} (sha256 {previous}); choose another "
            f"--name, or delete {target} to replace it"
        )
    return target


def read_gguf_info(path: Path, digest: str, parts: list[str]) -> GGUFInfo:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # gguf raises ValueError/struct errors on a truncated or foreign file
        raise DLNError(f"cannot read the GGUF header of {parts[0]}: {err}; is a part missing?") from err

    def field(key: str, default=""):
        value = reader.fields.get(key)
        return value.contents() if value is not None else default

    return GGUFInfo(
        sha256=digest,
        size_bytes=path.stat().st_size,
        parts=parts,
        architecture=str(field("general.architecture")),
        model_name=str(field("general.name")),
        license=str(field("general.license", "not stated in the file")),
        has_chat_template="tokenizer.chat_template" in reader.fields,
        tensor_count=len(reader.tensors),
    )
