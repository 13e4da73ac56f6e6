"""An OpenAI-compatible server for base models, DLN programs and Best-of-N (`dln serve`).

Layout, after vLLM's server:

- `protocol`: the pydantic request/response models (OpenAI's wire format);
- `serving_base`, `serving_completion`, `serving_chat`: the serving logic (requests -> backend jobs ->
  responses);
- `routes`: thin FastAPI routes; `middleware`: API key and body-size checks; `errors`: the one mapping of
  failures to OpenAI's error format;
- `backends/`: the model side: `jobs` (what a backend takes and returns), `hf_engine` (batched HF
  generation), `logprobs` (token log-probs), `streaming` (live text), `batcher` (the micro-batcher that
  groups concurrent requests into one engine call on a single model thread), `continuous` (continuous
  batching: generations join the running batch at the next decode step), `hf_backend` (`HFBackend`, the
  async face of the HF engine), `vllm` (vLLM's async engine for `vllm:` models);
- `models`: served names (base model + programs); `reward_registry`: the Best-of-N rewards;
- `config`: `ServerConfig`, from which `dln serve`'s options are built; `cli`: the `dln serve` command;
- `app`: `create_app` / `build_app` / `serve`.

Example:
    ```python
    import uvicorn
    from dln.lm import load_model
    from serving import create_app

    app = create_app(load_model("hf:default", cache=False), served_name="default")
    uvicorn.run(app, host="127.0.0.1", port=8000)
    ```
"""

from serving.app import build_app, create_app, serve
from serving.backends.batcher import MicroBatcher
from serving.backends.hf_backend import HFBackend
from serving.config import ServerConfig
from serving.models import ModelRegistry
from serving.reward_registry import RewardRegistry

__all__ = [
    "HFBackend",
    "MicroBatcher",
    "ModelRegistry",
    "RewardRegistry",
    "ServerConfig",
    "build_app",
    "create_app",
    "serve",
]
