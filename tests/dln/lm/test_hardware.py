"""bf16 is native only where the CPU has avx512_bf16 or AMX, and asking for it elsewhere is said once."""

from __future__ import annotations

import logging

import pytest

from dln.lm import hardware


@pytest.fixture
def flags(monkeypatch):
    """Pretend the CPU has the given flags (and forget earlier warnings)."""

    def set_flags(*names: str) -> None:
        monkeypatch.setattr(hardware, "cpu", lambda: ("test cpu", names))
        hardware.warn_if_emulated_bf16.cache_clear()

    yield set_flags
    hardware.warn_if_emulated_bf16.cache_clear()


@pytest.mark.parametrize(
    ("names", "native"),
    [
        (("avx2", "fma"), False),
        (("avx2", "avx512f"), False),
        (("avx512f", "avx512_bf16"), True),
        (("amx_bf16",), True),
    ],
)
def test_native_bf16_needs_avx512_bf16_or_amx(flags, names, native):
    flags(*names)
    assert hardware.native_bf16("cpu") is native


def test_emulated_bf16_is_warned_once_with_the_fix(flags, caplog):
    flags("avx2")
    with caplog.at_level(logging.WARNING, logger="dln.lm.hardware"):
        assert hardware.warn_if_emulated_bf16("cpu", "bf16: true") is True
        assert hardware.warn_if_emulated_bf16("cpu", "bf16: true") is True
    assert len(caplog.records) == 1
    assert "bf16: true" in caplog.text and "10x slower" in caplog.text and "turn it off" in caplog.text


def test_native_bf16_is_not_warned(flags, caplog):
    flags("amx_bf16")
    with caplog.at_level(logging.WARNING, logger="dln.lm.hardware"):
        assert hardware.warn_if_emulated_bf16("cpu", "dtype=bfloat16") is False
    assert not caplog.records


def test_the_real_cpu_is_read():
    model, names = hardware.cpu()
    assert isinstance(model, str) and set(names) <= set(hardware.CPU_FLAGS)
