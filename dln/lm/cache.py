"""A persistent request cache that wraps any backend, so re-runs and resumed runs cost no model calls.

One sqlite file in WAL mode: readers never block the writer, several processes and threads share it, and each
batch of answers is written in one transaction, so a process killed mid-write leaves the file as it was
before that batch. A key is the SHA-256 of everything that changes the answer: the backend and model
(`uri`), the method, the prompt (or context and continuation), n, temperature, max tokens, stop strings,
seed and, for samples, the sampler that drew them (`sampler`). Sampling with temperature > 0 and no seed is
not cached unless `cache_unseeded_samples` is set, since a second call is expected to give new samples.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from dln.errors import DLNError
from dln.lm.base import LanguageModel, Prompt, SamplingOptions, ScoredSample

_SQL_CHUNK = 500  # stay under sqlite's limit on bound parameters


class RequestCache:
    """A key -> JSON value store in one sqlite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection()
        except (OSError, sqlite3.DatabaseError) as err:
            raise DLNError(
                f"cannot open the request cache {self.path}: {err}; delete the file, point DLN_CACHE at "
                f"another file, or disable the cache with --no-cache / DLN_CACHE=off"
            ) from err

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._local.conn = conn
        return conn

    def get_many(self, keys: Sequence[str]) -> dict[str, object]:
        found: dict[str, object] = {}
        conn = self._connection()
        for start in range(0, len(keys), _SQL_CHUNK):
            chunk = list(keys[start : start + _SQL_CHUNK])
            marks = ",".join("?" * len(chunk))
            for key, value in conn.execute(f"SELECT key, value FROM requests WHERE key IN ({marks})", chunk):
                found[key] = json.loads(value)
        return found

    def put_many(self, items: dict[str, object]) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO requests (key, value) VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in items.items()],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM requests").fetchone()[0]


def request_key(**fields) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CachedLanguageModel(LanguageModel):
    """Serve answers from the cache; send only the misses, as one batch, to the wrapped backend."""

    def __init__(
        self, inner: LanguageModel, path: str | Path, *, cache_unseeded_samples: bool = False
    ) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.sampler = inner.sampler
        self.store = RequestCache(path)
        self.cache_unseeded_samples = cache_unseeded_samples
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str):  # tokenizer, model, render, ... of the wrapped backend
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _generate(self, prompts: list[Prompt], options: SamplingOptions) -> list[list[str]]:
        if not options.greedy and options.seed is None and not self.cache_unseeded_samples:
            return self.inner._generate(prompts, options)
        sampling = asdict(options)
        keys = [
            request_key(uri=self.uri, sampler=self.sampler, method="generate", prompt=p, **sampling)
            for p in prompts
        ]
        return self._through_cache(keys, prompts, lambda missing: self.inner._generate(missing, options))

    def _score(self, contexts: list[Prompt], continuations: list[str]) -> list[list[float]]:
        return self._pairs_through_cache("score", contexts, continuations, self.inner._score)

    def _sample(
        self, prompts: list[Prompt], options: SamplingOptions, top_p: float
    ) -> list[list[ScoredSample]]:
        if not options.greedy and options.seed is None and not self.cache_unseeded_samples:
            return self.inner._sample(prompts, options, top_p)
        sampling = asdict(options)
        keys = [
            request_key(
                uri=self.uri, sampler=self.sampler, method="sample", prompt=p, top_p=top_p, **sampling
            )
            for p in prompts
        ]
        rows = self._through_cache(
            keys,
            prompts,
            lambda missing: [
                [[s.text, list(s.token_ids), s.logprob] for s in row]
                for row in self.inner._sample(missing, options, top_p)
            ],
        )
        return [[ScoredSample(text, tuple(ids), lp) for text, ids, lp in row] for row in rows]

    def _score_ids(self, contexts: list[Prompt], continuations: list[list[int]]) -> list[list[float]]:
        return self._pairs_through_cache("score_ids", contexts, continuations, self.inner._score_ids)

    def _pairs_through_cache(self, method: str, contexts: list, continuations: list, compute) -> list:
        """(context, continuation) requests, keyed per pair; only the missing pairs reach `compute`."""
        keys = [
            request_key(uri=self.uri, method=method, context=c, continuation=x)
            for c, x in zip(contexts, continuations)
        ]
        pairs = list(zip(contexts, continuations))
        return self._through_cache(
            keys, pairs, lambda missing: compute([c for c, _ in missing], [x for _, x in missing])
        )

    def _through_cache(self, keys: list[str], requests: list, compute: Callable[[list], list]) -> list:
        found = self.store.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        # identical requests inside one batch are computed once
        first_of = {}
        for i in missing:
            first_of.setdefault(keys[i], i)
        self.hits += len(keys) - len(missing)
        self.misses += len(first_of)
        if first_of:
            answers = compute([requests[i] for i in first_of.values()])
            fresh = dict(zip(first_of, answers))
            self.store.put_many(fresh)
            found.update(fresh)
        return [found[key] for key in keys]

    def close(self) -> None:
        self.inner.close()
