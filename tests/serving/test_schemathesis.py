"""A bounded schemathesis run against the server's own `/openapi.json` (loopback, API key configured): every
operation, every built-in check, failures = 0, so the document stays true.

Two runs per operation, each with a fixed hypothesis seed and example count:

- negative: bodies that violate the server's document exactly as served must be rejected with a declared
  4xx (and an OpenAI error object);
- positive: bodies valid under the document, with `model` bound to the served name and the sizes bound
  (short prompts, `max_tokens` <= 1, n <= 2, no stop list: a decoding step can cost seconds on a loaded
  2-core CPU), so that they reach the model and are answered quickly; the cross-field rules a JSON schema
  cannot state (`best_of` >= n, a known `reward`, `top_logprobs` only with `logprobs`) are left out.
"""

from __future__ import annotations

import copy

import httpx
import pytest
from hypothesis import HealthCheck, settings
from serve_helpers import start

schemathesis = pytest.importorskip("schemathesis")

KEY = "fuzz-key-31c8"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 12
#: the operations that run the model get fewer examples: each is a generation (well under a minute in all)
MODEL_EXAMPLES = 6
MODEL_PATHS = {"/v1/completions", "/v1/chat/completions"}
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
CALLS: dict[str, int] = {}


@pytest.fixture(scope="module")
def server(hf_model):
    with start(hf_model, api_key=KEY) as s:
        yield s


@pytest.fixture(scope="module")
def served_schema(server) -> dict:
    return httpx.get(f"{server.url}/openapi.json").json()


def config(mode: str):
    from schemathesis.config import SchemathesisConfig

    return SchemathesisConfig.from_dict(
        {
            "seed": 18,
            "output": {"sanitization": {"enabled": False}},
            "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
            "generation": {"mode": mode, "max-examples": EXAMPLES, "deterministic": True},
        }
    )


def bounded(schema: dict) -> dict:
    """The served document with the model name and the sizes bound, and the cross-field rules left out."""
    schema = copy.deepcopy(schema)
    defs = schema["components"]["schemas"]
    for name in (
        "CompletionRequest",
        "ChatCompletionRequest",
        "TokenizeCompletionRequest",
        "TokenizeChatRequest",
        "DetokenizeRequest",
    ):
        props = defs[name]["properties"]
        props["model"] = {"type": "string", "enum": ["default"]}
        for field in ("best_of", "reward", "top_logprobs", "structured_outputs"):
            props.pop(field, None)
        for field in ("max_tokens", "max_completion_tokens"):
            if field in props:
                props[field] = {"type": "integer", "minimum": 0, "maximum": 1}
        if "n" in props:
            props["n"]["maximum"] = 2
        if (
            "seed" in props
        ):  # at +-2**63 a float compares equal to integers past the bound (the matrix tests it)
            props["seed"] = {"type": "integer", "minimum": -(2**31), "maximum": 2**31}
        if "stop" in props:  # a stop list costs transformers a table over the vocabulary per request (~1 s)
            props["stop"] = {"type": "array", "maxItems": 0}
        if "max_tokens" in props:
            defs[name]["required"] = sorted({*defs[name].get("required", []), "max_tokens"})
        defs[name]["additionalProperties"] = False  # no random extra fields named like a real one
    defs["CompletionRequest"]["properties"]["prompt"] = {
        "anyOf": [
            {"type": "string", "maxLength": 40},
            {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": 1, "maxItems": 2},
            {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                "minItems": 1,
                "maxItems": 20,
            },
        ]
    }
    defs["DetokenizeRequest"]["properties"]["tokens"]["items"]["maximum"] = 1000
    defs["ChatMessage"]["properties"]["content"] = {"type": "string", "maxLength": 40}
    defs["ChatMessage"]["additionalProperties"] = False
    for name in ("ChatCompletionRequest", "TokenizeChatRequest"):
        defs[name]["properties"]["messages"]["maxItems"] = 3
    defs["TokenizeCompletionRequest"]["properties"]["prompt"]["maxLength"] = 200
    for operation in schema["paths"].get("/v1/models/{model_id}", {}).values():
        for parameter in operation.get("parameters", []):
            parameter["schema"] = {"type": "string", "enum": ["default"]}
    return schema


OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
]
#: operations without parameters or a body have no schema-violating request to make
NO_INPUT = {"/health", "/metrics", "/v1/models"}


@pytest.fixture(scope="module")
def schemas(served_schema) -> dict:
    return {
        "negative": schemathesis.openapi.from_dict(served_schema, config=config("negative")),
        "positive": schemathesis.openapi.from_dict(bounded(served_schema), config=config("positive")),
    }


#: every operation with valid requests; negative requests only where there is input to violate
RUNS = [("positive", m, p) for m, p in OPERATIONS] + [
    ("negative", m, p) for m, p in OPERATIONS if p not in NO_INPUT
]


@pytest.mark.parametrize("mode, method, path", RUNS)
def test_schemathesis(server, schemas, mode, method, path):
    from hypothesis import given
    from schemathesis.generation import GenerationMode

    strategy = schemas[mode][path][method].as_strategy(generation_mode=GenerationMode(mode))

    examples = MODEL_EXAMPLES if mode == "positive" and path in MODEL_PATHS else EXAMPLES

    @settings(SETTINGS, max_examples=examples)
    @given(strategy)
    def run(case):
        CALLS[mode] = CALLS.get(mode, 0) + 1
        case.call_and_validate(base_url=server.url, headers=AUTH, timeout=60)

    run()


def test_the_runs_reached_every_operation_and_the_model(server, served_schema):
    operations = sum(len(ops) for ops in served_schema["paths"].values())
    assert operations == len(OPERATIONS)
    print(f"schemathesis: {operations} operations, {CALLS} cases, failures = 0")
    metrics = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    generated = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("dln_generation_tokens_total")
    )
    assert generated > 0  # positive bodies were answered by the model, not all refused
