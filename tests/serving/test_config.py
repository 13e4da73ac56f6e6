"""`dln serve`'s options are `ServerConfig`'s fields: same defaults, repeatable lists, typed values."""

from __future__ import annotations

import argparse

from serving.config import ServerConfig, add_config_options, config_from_args


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    return parser


def test_no_options_give_the_default_config():
    assert config_from_args(parser().parse_args([])) == ServerConfig()


def test_options_fill_their_fields():
    argv = ["--program", "a=x.json", "--program", "b=y.json", "--reward", "r=m:f", "--port", "9"]
    config = config_from_args(parser().parse_args([*argv, "--batch-wait-ms", "2.5", "--log-level", "debug"]))
    assert config.programs == ["a=x.json", "b=y.json"] and config.rewards == ["r=m:f"]
    assert config.port == 9 and config.batch_wait_ms == 2.5 and config.log_level == "debug"


def test_decode_dtype_reaches_the_served_backend():
    import torch

    from serving.app import build_backend

    config = config_from_args(parser().parse_args(["--decode-dtype", "bfloat16"]))
    backend = build_backend("hf:default", decode_dtype=config.decode_dtype)
    lm = backend.engine.lm
    assert lm.uri.endswith("#decode=bfloat16") and lm.decoder.dtype == torch.bfloat16
    assert lm.model.dtype == torch.float32  # log-probs still come from the fp32 weights
