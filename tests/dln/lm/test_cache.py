"""The request cache: hits cost no model call, the key holds every answer-changing field, and neither a killed
writer nor concurrent threads corrupt the file."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from dln.lm.base import LanguageModel
from dln.lm.cache import CachedLanguageModel, RequestCache


class CountingModel(LanguageModel):
    """Passes calls to the real model and counts the requests that reach it."""

    def __init__(self, inner: LanguageModel) -> None:
        self.inner, self.uri, self.sampler = inner, inner.uri, inner.sampler
        self.generated: list = []
        self.scored: list = []

    def _generate(self, prompts, options):
        self.generated.extend(prompts)
        return self.inner._generate(prompts, options)

    def _score(self, contexts, continuations):
        self.scored.extend(zip(contexts, continuations))
        return self.inner._score(contexts, continuations)


@pytest.fixture()
def counted(hf_model, tmp_path):
    counter = CountingModel(hf_model)
    return counter, CachedLanguageModel(counter, tmp_path / "cache.sqlite")


def test_cached_answers_are_identical_and_cost_no_call(counted):
    counter, cached = counted
    first = cached.generate(["The capital of France is", "1, 2, 3,"], max_tokens=8)
    scores = cached.score(["The capital of France is"], [" Paris"])
    labels = cached.classify(["Is water wet? Answer:"], [" yes", " no"])
    calls = (len(counter.generated), len(counter.scored))
    assert calls == (2, 3)
    assert cached.generate(["The capital of France is", "1, 2, 3,"], max_tokens=8) == first
    assert cached.score(["The capital of France is"], [" Paris"]) == scores
    assert (cached.classify(["Is water wet? Answer:"], [" yes", " no"]) == labels).all()
    assert (len(counter.generated), len(counter.scored)) == calls


def test_only_misses_reach_the_model(counted):
    counter, cached = counted
    cached.generate(["A"], max_tokens=4)
    cached.generate(["A", "B", "B"], max_tokens=4)
    assert counter.generated == ["A", "B"]  # "A" was cached, the duplicate "B" is computed once


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 5},
        {"temperature": 0.7, "seed": 1},
        {"stop": ["."]},
        {"n": 2, "temperature": 1.0, "seed": 1},
    ],
)
def test_every_sampling_field_is_in_the_key(counted, change):
    counter, cached = counted
    cached.generate(["Hello"], max_tokens=4)
    cached.generate(["Hello"], **{"max_tokens": 4, **change})
    assert len(counter.generated) == 2


def test_a_sample_of_another_sampler_is_not_served(counted, tmp_path):
    """The same seed draws other samples under a new sampler, so the sampler's name is in the key."""
    counter, cached = counted
    assert cached.sampler == counter.inner.sampler != ""
    cached.generate(["Hello"], temperature=1.0, seed=3, max_tokens=4)
    counter.sampler = "another-sampler"
    renamed = CachedLanguageModel(counter, tmp_path / "cache.sqlite")
    renamed.generate(["Hello"], temperature=1.0, seed=3, max_tokens=4)
    assert len(counter.generated) == 2 and renamed.hits == 0


def test_unseeded_sampling_is_not_served_from_cache_unless_asked(counted, tmp_path):
    counter, cached = counted
    cached.generate(["Hello"], temperature=1.0, max_tokens=4)
    cached.generate(["Hello"], temperature=1.0, max_tokens=4)
    assert len(counter.generated) == 2
    opted_in = CachedLanguageModel(counter, tmp_path / "other.sqlite", cache_unseeded_samples=True)
    first = opted_in.generate(["Hello"], temperature=1.0, max_tokens=4)
    assert opted_in.generate(["Hello"], temperature=1.0, max_tokens=4) == first
    assert len(counter.generated) == 3


def test_cache_persists_across_processes_of_the_same_file(counted, tmp_path):
    counter, cached = counted
    cached.score(["Hi"], [" there"])
    again = CachedLanguageModel(counter, tmp_path / "cache.sqlite")
    again.score(["Hi"], [" there"])
    assert len(counter.scored) == 1 and again.hits == 1


WRITER = """
import sys
from dln.lm.cache import RequestCache
store = RequestCache(sys.argv[1])
i = 0
while True:
    store.put_many({f"k{i}-{j}": {"batch": i, "payload": "x" * 2000} for j in range(50)})
    print(i, flush=True)
    i += 1
"""


def test_a_killed_writer_leaves_a_consistent_cache(tmp_path):
    path = tmp_path / "cache.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = -1
    deadline = time.time() + 60
    while committed < 20 and time.time() < deadline:
        committed = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert committed >= 20
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    batches: dict[int, int] = {}
    for (value,) in conn.execute("SELECT value FROM requests"):
        record = json.loads(value)
        batches[record["batch"]] = batches.get(record["batch"], 0) + 1
    assert all(count == 50 for count in batches.values())  # every batch is all or nothing
    assert set(range(committed + 1)) <= set(batches)  # nothing acknowledged was lost
    store = RequestCache(path)
    store.put_many({"after": 1})
    assert store.get_many(["after"]) == {"after": 1}


def test_threads_share_one_cache_file(tmp_path):
    store = RequestCache(tmp_path / "cache.sqlite")
    errors = []

    def write(t: int) -> None:
        try:
            for i in range(20):
                store.put_many({f"{t}-{i}": [t, i]})
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(store) == 80


def test_a_file_that_is_not_a_cache_is_a_clear_error(tmp_path):
    from dln import DLNError

    bad = tmp_path / "cache.sqlite"
    bad.write_text("this is not sqlite " * 100)
    with pytest.raises(DLNError, match="DLN_CACHE"):
        RequestCache(bad)


def test_dln_cache_env_selects_or_disables_the_cache(monkeypatch, tmp_path):
    from dln.home import default_cache_path

    monkeypatch.setenv("DLN_CACHE", "off")
    assert default_cache_path() is None
    monkeypatch.setenv("DLN_CACHE", str(tmp_path / "c.sqlite"))
    assert default_cache_path() == tmp_path / "c.sqlite"
