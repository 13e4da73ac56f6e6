"""Continuous batching: requests join the running batch at the next decode step, leave when done or cancelled,
and each answers what it answers alone (today's `generate` path, one request at a time)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from serve_helpers import start

from serving import HFBackend
from serving.backends.hf_engine import HFEngine
from serving.backends.jobs import GenerateJob, SamplingParams

LONG = "Once upon a time"  # the default model goes on past 48 tokens without an end token
SHORT = "The capital of France is"


def alone(hf_model, prompt: str, **params) -> list[str]:
    """The texts of one request decoded by itself through `generate` (the path without continuous
    batching)."""
    engine = HFEngine(hf_model)
    [samples] = engine.generate([GenerateJob([hf_model.encode_prompt(prompt)], SamplingParams(**params))])[0]
    return [s.text for s in samples]


@pytest.fixture(scope="module")
def server(hf_model):
    with start(hf_model) as s:
        yield s


@pytest.fixture(scope="module")
def old_server(hf_model):
    with start(hf_model, backend_options={"continuous": False}) as s:
        yield s


class Stream:
    """A streaming completion read in a thread: its text, when its first and last chunks came, and whether it
    ended."""

    def __init__(self, server, prompt: str, max_tokens: int, stop_after: int | None = None, **params) -> None:
        self.text, self.first, self.last, self.finish = "", None, None, None
        self.chunks = 0
        self.started = threading.Event()
        stream = server.client.completions.create(
            model="default", prompt=prompt, max_tokens=max_tokens, stream=True, **params
        )

        def read() -> None:
            for chunk in stream:
                if not chunk.choices:
                    continue
                now = time.monotonic()
                self.first = self.first or now
                self.last = now
                self.text += chunk.choices[0].text
                self.finish = chunk.choices[0].finish_reason or self.finish
                self.chunks += 1
                self.started.set()
                if stop_after is not None and self.chunks >= stop_after:
                    stream.close()  # the client goes away mid-stream
                    return

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()

    def wait(self) -> Stream:
        self.thread.join(timeout=300)
        assert not self.thread.is_alive()
        return self


def late_request(server, **params) -> tuple[list[str], float, float]:
    """A short streaming request sent while a long one decodes: its texts, first and last chunk times."""
    late = Stream(server, SHORT, 6, **params).wait()
    return [late.text], late.first, late.last


@pytest.mark.parametrize(
    "params", [{"temperature": 0.0}, {"temperature": 0.8, "top_p": 0.9, "seed": 5}], ids=["greedy", "seeded"]
)
def test_a_late_request_joins_the_running_batch_and_answers_as_alone(server, old_server, hf_model, params):
    want_long = alone(hf_model, LONG, temperature=0.0, max_tokens=48)
    want_late = alone(hf_model, SHORT, max_tokens=6, **params)
    for s, joins in ((server, True), (old_server, False)):
        long = Stream(s, LONG, 48, temperature=0.0)
        assert long.started.wait(timeout=120)
        texts, first, last = late_request(s, **params)
        long.wait()
        assert long.finish == "length" and long.text == want_long[0]
        assert texts == want_late
        # joining: the late request streams and ends while the long one still decodes; without continuous
        # batching it waits for the whole long batch
        assert (last < long.last) is joins, (first, last, long.last)


def test_a_finished_request_leaves_and_the_batch_goes_on(server, hf_model):
    want = alone(hf_model, LONG, temperature=0.0, max_tokens=40)
    long = Stream(server, LONG, 40, temperature=0.0)
    assert long.started.wait(timeout=120)
    short = server.client.completions.create(model="default", prompt=SHORT, max_tokens=3, temperature=0)
    rows, chunks = server.state.backend.stats()["rows"], long.chunks
    long.wait()
    assert short.choices[0].text == alone(hf_model, SHORT, temperature=0.0, max_tokens=3)[0]
    assert rows == 1 and long.chunks > chunks  # the short one left; the long one decoded on
    assert long.text == want[0]


def wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_cancelled_stream_frees_its_slot_and_the_server_keeps_serving(server, hf_model):
    want = alone(hf_model, LONG, temperature=0.0, max_tokens=40)
    stats = server.state.backend.stats
    before = stats()["steps"]
    kept = Stream(server, LONG, 40, temperature=0.0)
    gone = Stream(server, LONG, 200, stop_after=3, temperature=0.0)
    assert wait_for(lambda: stats()["rows"] == 2)
    gone.wait()  # the client closed its stream after 3 chunks
    assert wait_for(lambda: stats()["rows"] == 1)  # its row left at the next step
    assert kept.thread.is_alive()  # while the other one decodes on
    assert kept.wait().text == want[0]
    assert wait_for(lambda: stats()["rows"] == 0)
    assert stats()["steps"] - before < 100  # far fewer than the 200 tokens it asked for
    again = server.client.completions.create(model="default", prompt=SHORT, max_tokens=4, temperature=0)
    assert again.choices[0].text == alone(hf_model, SHORT, temperature=0.0, max_tokens=4)[0]


MIXED = [
    (SHORT, SamplingParams(temperature=0.0, max_tokens=8)),
    ("Two plus two equals", SamplingParams(n=2, temperature=0.9, top_p=0.8, max_tokens=8, seed=11)),
    ("My favourite food is", SamplingParams(temperature=0.7, max_tokens=12, stop=(".", "!"), seed=3)),
    ("The sky is", SamplingParams(n=2, temperature=0.0, max_tokens=3)),
    ("In 1492, Columbus", SamplingParams(temperature=1.0, top_p=0.95, max_tokens=5, seed=7)),
    ("1, 2, 3, 4,", SamplingParams(temperature=0.0, max_tokens=20, stop=(" 7",))),
]


def run_backend(hf_model, jobs: list[GenerateJob], **options):
    """The jobs' samples from a backend that gets them all at once, and its counters."""

    async def main():
        backend = HFBackend(hf_model, warmup=False, **options)
        await backend.start()
        try:
            results = await asyncio.gather(*(backend.generate(job) for job in jobs))
            return results, backend.stats()
        finally:
            await backend.stop()

    return asyncio.run(main())


def test_rows_with_different_options_decode_together_and_answer_as_alone(hf_model):
    jobs = [GenerateJob([hf_model.encode_prompt(p)], params) for p, params in MIXED]
    results, stats = run_backend(hf_model, jobs)
    assert stats["batches"] == 1 and stats["largest_batch"] == len(MIXED)  # one prefill, one running batch
    engine = HFEngine(hf_model)
    for job, [got] in zip(jobs, results, strict=True):
        [want] = engine.generate([job])[0]
        assert [(s.text, s.token_ids, s.finish_reason) for s in got] == [
            (s.text, s.token_ids, s.finish_reason) for s in want
        ], job.params


def test_a_prompt_bigger_than_the_batch_runs_alone_and_the_rest_wait_for_room(hf_model):
    params = SamplingParams(n=3, temperature=0.8, max_tokens=6, seed=2)
    jobs = [
        GenerateJob([hf_model.encode_prompt(SHORT)], params),
        GenerateJob([hf_model.encode_prompt(p) for p in ("The sky is", "Water boils at")], MIXED[0][1]),
    ]
    results, stats = run_backend(hf_model, jobs, max_batch_size=2)
    engine = HFEngine(hf_model)
    for job, got in zip(jobs, results, strict=True):
        want = engine.generate([job])[0]
        assert [[s.token_ids for s in p] for p in got] == [[s.token_ids for s in p] for p in want]
    assert stats["rows"] == stats["running"] == stats["waiting"] == 0
