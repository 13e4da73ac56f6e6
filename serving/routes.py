"""Thin HTTP routes: parse, hand to the serving layer, return JSON or a server-sent-event stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from serving.openapi import errors
from serving.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from serving.serving_tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter()


def _respond(result: BaseModel | AsyncIterator[str]) -> Response:
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(), media_type="application/json")
    return StreamingResponse(
        result,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/health")
async def health(request: Request) -> dict:
    state = request.app.state.dln
    return {
        "status": "ok",
        "models": state.models.names(),
        "backend": state.backend.kind,
        "batching": state.backend.stats(),
    }


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> Response:
    return _respond(request.app.state.dln.models.model_list())


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=errors(404))
async def retrieve_model(model_id: str, request: Request) -> Response:
    models = request.app.state.dln.models
    models.resolve(model_id)  # 404 for an unknown name
    return _respond(next(card for card in models.model_list().data if card.id == model_id))


@router.post("/v1/completions", response_model=CompletionResponse, responses=errors(400, 404))
async def completions(body: CompletionRequest, request: Request) -> Response:
    return _respond(await request.app.state.dln.completions.create(body))


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=errors(400, 404))
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return _respond(await request.app.state.dln.chat.create(body))


@router.post("/tokenize", response_model=TokenizeResponse, responses=errors(400, 404))
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    return _respond(request.app.state.dln.tokenization.tokenize(body))


@router.post("/detokenize", response_model=DetokenizeResponse, responses=errors(400, 404))
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    return _respond(request.app.state.dln.tokenization.detokenize(body))


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}},
)
async def metrics(request: Request) -> Response:
    metrics = request.app.state.dln.metrics
    return Response(metrics.render(), media_type=metrics.content_type)
