"""Any OpenAI-compatible server (ours from `dln serve`, vLLM's, OpenAI's) through the `openai` SDK.

URI: `openai:<model>@<base_url>`, e.g. `openai:default@http://127.0.0.1:8000/v1`. The API key comes from
`DLN_API_KEY` or `OPENAI_API_KEY` (a placeholder when neither is set: local servers often need none).

Scoring uses the completions endpoint with `echo=True, logprobs=0, max_tokens=0` on context+continuation and
keeps the tokens that end after the end of the context: a token that straddles the boundary counts to the
continuation. With the leading-space convention of `dln.lm.base` the boundary is a
token boundary and the numbers agree with the `hf:` backend.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from dln.errors import DLNError
from dln.lm.base import LanguageModel, Prompt, SamplingOptions


class OpenAILanguageModel(LanguageModel):
    """Client of a remote model; requests of one call go out concurrently (`max_concurrency`)."""

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_concurrency: int = 8,
        check: bool = True,
    ) -> None:
        import openai

        self.model_name, self.base_url = model, base_url.rstrip("/")
        self.uri = f"openai:{model}@{self.base_url}"
        key = api_key or os.environ.get("DLN_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=1)
        self.max_concurrency = max_concurrency
        if check:
            self._check_model()

    @classmethod
    def from_uri_rest(cls, rest: str, **options) -> OpenAILanguageModel:
        model, sep, base_url = rest.rpartition("@")
        if not sep or not model or not base_url.startswith(("http://", "https://")):
            raise DLNError(
                f"openai model URI must be openai:<model>@<base_url> (e.g. "
                f"openai:default@http://127.0.0.1:8000/v1), got openai:{rest}"
            )
        return cls(model, base_url, **options)

    def _call(self, request, *args, **kwargs):
        """Run one SDK call, turning transport and API failures into one-line errors."""
        import openai

        try:
            return request(*args, **kwargs)
        except openai.APIConnectionError as err:
            raise DLNError(
                f"cannot reach the server at {self.base_url}: is it running, and is the URL right "
                f"(it usually ends in /v1)?"
            ) from err
        except openai.AuthenticationError as err:
            raise DLNError(
                f"the server at {self.base_url} refused the API key: set DLN_API_KEY or OPENAI_API_KEY"
            ) from err
        except openai.APIStatusError as err:
            raise DLNError(
                f"the server at {self.base_url} answered {err.status_code}: {_message(err)}"
            ) from err

    def _check_model(self) -> None:
        served = [m.id for m in self._call(self.client.models.list)]
        if self.model_name not in served:
            raise DLNError(
                f"the server at {self.base_url} does not serve model {self.model_name!r}; it serves: "
                f"{', '.join(served) or 'nothing'}"
            )

    def _map(self, function, items: list) -> list:
        if len(items) <= 1 or self.max_concurrency <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(function, items))

    def _generate(self, prompts: list[Prompt], options: SamplingOptions) -> list[list[str]]:
        if options.max_tokens == 0:
            return [[""] * options.n for _ in prompts]
        fields = {
            "model": self.model_name,
            "n": options.n,
            "temperature": options.temperature,
            "max_tokens": options.max_tokens,
            "stop": list(options.stop) or None,
            "seed": options.seed,
        }

        def one(prompt: Prompt) -> list[str]:
            if isinstance(prompt, str):
                response = self._call(self.client.completions.create, prompt=prompt, **fields)
                choices = sorted(response.choices, key=lambda c: c.index)
                return [c.text for c in choices]
            response = self._call(self.client.chat.completions.create, messages=prompt, **fields)
            return [c.message.content or "" for c in sorted(response.choices, key=lambda c: c.index)]

        return self._map(one, prompts)

    def _score(self, contexts: list[Prompt], continuations: list[str]) -> list[list[float]]:
        def one(pair: tuple[Prompt, str]) -> list[float]:
            context, continuation = pair
            if not isinstance(context, str):
                raise DLNError(
                    "the openai: backend scores raw string contexts only (the server applies no chat "
                    "template to completions); render the chat prompt to text first"
                )
            if not continuation:
                return []
            response = self._call(
                self.client.completions.create,
                model=self.model_name,
                prompt=context + continuation,
                echo=True,
                logprobs=0,
                max_tokens=0,
                temperature=0.0,
            )
            logprobs = response.choices[0].logprobs if response.choices else None
            if logprobs is None or not logprobs.token_logprobs or logprobs.text_offset is None:
                raise DLNError(
                    f"the server at {self.base_url} does not return prompt log-probs with echo=True; "
                    f"score/classify need a server that can echo (dln serve, vLLM's server)"
                )
            ends = list(logprobs.text_offset[1:]) + [len(context) + len(continuation)]
            return [
                lp for lp, end in zip(logprobs.token_logprobs, ends) if end > len(context) and lp is not None
            ]

        return self._map(one, list(zip(contexts, continuations)))

    def close(self) -> None:
        self.client.close()


def _message(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(err)
