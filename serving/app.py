"""The FastAPI application: `create_app`, `build_app` and `serve`.

`create_app` wires a backend, the served models and the rewards into an app; `build_app` does it from a
`serving.config.ServerConfig` (model URI, `NAME=path` programs, `NAME=DIR[@S]` TFB adapters,
`NAME=module:function` rewards); `serve` runs it under uvicorn. Backends: `hf:` models get the HF engine with
continuous batching (`backends.hf_backend`); a `vllm:` model uses vLLM's async engine (continuous batching,
`backends.vllm`) when vllm is importable, else the HF engine on the same model directory.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from types import SimpleNamespace

from fastapi import FastAPI

from dln.errors import DLNError
from dln.lm.base import LanguageModel
from serving.backends.batcher import model_thread
from serving.backends.hf_backend import HFBackend
from serving.config import MAX_BODY_BYTES, ServerConfig
from serving.errors import install_error_handlers
from serving.metrics import MetricsMiddleware, ServerMetrics
from serving.middleware import PUBLIC_PATHS, APIKeyMiddleware, BodyLimitMiddleware
from serving.models import (
    ModelRegistry,
    load_program_spec,
    load_tfb_spec,
    served_name_for,
    share_base_model,
)
from serving.openapi import install_openapi
from serving.reward_registry import RewardRegistry, load_reward_spec
from serving.routes import router
from serving.serving_chat import ChatServing
from serving.serving_completion import CompletionServing
from serving.serving_tokenize import TokenizeServing

log = logging.getLogger("serving")


def create_app(
    backend,
    *,
    served_name: str = "default",
    base_uri: str | None = None,
    programs: dict | None = None,
    rewards: dict | None = None,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """An OpenAI-compatible app over `backend`.

    Args:
        backend: an `HFBackend` / `VLLMBackend`, or an `HFLanguageModel` (wrapped in an `HFBackend` with the
            default batching).
        served_name: the base model's name in requests and `/v1/models`.
        base_uri: the base model's URI, shown in `/v1/models` (default: the backend model's `uri`).
        programs: name -> program (see `serving.models`); more can be added later through
            `app.state.dln.models.add_program`.
        rewards: name -> `(prompt, completion) -> float`, added to the built-in rewards.
        api_key: when set, every route but `/health` needs `Authorization: Bearer <api_key>`.
        max_body_bytes: larger request bodies get 413.
    """
    backend = HFBackend(backend) if isinstance(backend, LanguageModel) else backend
    models = ModelRegistry(served_name, base_uri or getattr(backend, "uri", served_name))
    for name, program in (programs or {}).items():
        models.add_program(name, program)
    reward_registry = RewardRegistry()
    for name, function in (rewards or {}).items():
        reward_registry.add(name, function)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()

    app = FastAPI(title="dln OpenAI-compatible server", lifespan=lifespan)
    metrics = ServerMetrics(backend)
    app.state.dln = SimpleNamespace(
        backend=backend,
        models=models,
        rewards=reward_registry,
        metrics=metrics,
        completions=CompletionServing(backend, models, reward_registry, metrics),
        chat=ChatServing(backend, models, reward_registry, metrics),
        tokenization=TokenizeServing(backend.tokenizer, models, backend.max_model_len),
    )
    install_error_handlers(app)
    app.include_router(router)
    install_openapi(app, api_key=bool(api_key), public_paths=PUBLIC_PATHS)
    # The last added runs first: metrics see every answer; the key and the body size are checked unparsed.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=[r.path for r in router.routes])
    return app


def build_backend(
    uri: str,
    *,
    max_batch_size: int = 32,
    batch_wait_ms: float = 5.0,
    decode_dtype: str | None = None,
    continuous: bool = True,
):
    """The backend for a model URI: vLLM's async engine for `vllm:` when importable, else the HF engine."""
    from dln.lm.registry import parse_model_uri

    scheme, rest = parse_model_uri(uri)
    if scheme == "openai":
        raise DLNError(
            "dln serve serves local models (hf:... or vllm:...); an openai: URI is already a server"
        )
    if scheme == "vllm":
        from serving.backends.vllm import VLLMBackend, vllm_available

        if vllm_available():
            return VLLMBackend(rest)
        log.warning("vllm is not importable: serving %s with the HF engine", rest)
    from dln.lm.hf import HFLanguageModel

    lm = HFLanguageModel(rest, decode_dtype=decode_dtype)
    return HFBackend(lm, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, continuous=continuous)


def build_app(config: ServerConfig) -> FastAPI:
    """Programs and rewards load first (cheap, and their errors come before the model's), then the model."""
    programs = dict(load_program_spec(spec) for spec in config.programs)
    for spec in config.tfb:  # each loads its own copy of its base model (PEFT edits the modules it wraps)
        name, program = load_tfb_spec(spec)
        if name in programs:
            raise DLNError(f"model name {name!r} is given twice; give each program its own name")
        programs[name] = program
    rewards = dict(load_reward_spec(spec) for spec in config.rewards)
    if config.max_batch_size < 1:
        raise DLNError(f"--max-batch-size must be at least 1, got {config.max_batch_size}")
    backend = build_backend(
        config.model,
        max_batch_size=config.max_batch_size,
        batch_wait_ms=config.batch_wait_ms,
        decode_dtype=config.decode_dtype or None,
        continuous=config.continuous_batching,
    )
    base_lm = getattr(getattr(backend, "engine", None), "lm", None)  # the HF engine's model; None for vLLM
    for program_name, program in programs.items():
        if share_base_model(program, base_lm, config.model):
            log.info("program %r answers with the served model %s", program_name, config.model)
    name = config.served_model_name or served_name_for(config.model)
    app = create_app(
        backend,
        served_name=name,
        base_uri=config.model,
        programs=programs,
        rewards=rewards,
        api_key=config.api_key,
        max_body_bytes=config.max_body_bytes,
    )
    models = app.state.dln.models
    log.info(
        "serving %s as %r; programs: %s; rewards: %s; API key %s",
        config.model,
        name,
        ", ".join(models.programs) or "none",
        ", ".join(app.state.dln.rewards.names()) or "none",
        "required" if config.api_key else "not required",
    )
    return app


def _build_on_this_thread(config: ServerConfig) -> FastAPI:
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
    return build_app(config)


def serve(config: ServerConfig) -> None:
    import uvicorn

    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if config.model.startswith("vllm:"):  # vLLM's engine runs in its own processes, from the main thread
        app = _build_on_this_thread(config)
    else:  # the HF engine: loaded on the thread that will run it (`model_thread`)
        app = model_thread().submit(_build_on_this_thread, config).result()
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level)
