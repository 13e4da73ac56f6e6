"""The step-level decoder: rows that join and leave a running batch decode what they decode alone."""

from __future__ import annotations

import torch

from dln.lm import sampling
from dln.lm.continuous import Block, ContinuousDecoder, supports

MAX_TOKENS = 12
LONG = "Once upon a time, a small cat sat on a mat and"


def run(decoder: ContinuousDecoder, schedule: dict, end_ids: set[int]) -> dict:
    """Admit schedule[step] = [(name, ids, block)] at each step, step the rest, evict rows that end (an end
    token or MAX_TOKENS); returns {(name, row): new ids}. Checks the cache's shape after every step."""
    out: dict[int, list[int]] = {}
    owner: dict[int, tuple[str, int]] = {}
    step = 0
    while step in schedule or step < max(schedule) or len(decoder):
        if step in schedule:
            entries = schedule[step]
            handles, tokens = decoder.admit([(ids, block) for _, ids, block in entries])
            for (name, _, _), per_entry in zip(entries, handles):
                owner.update({h: (name, row) for row, h in enumerate(per_entry)})
        else:
            tokens = decoder.step()
        for handle, token in tokens.items():
            out.setdefault(handle, []).append(token)
        decoder.evict([h for h in tokens if out[h][-1] in end_ids or len(out[h]) >= MAX_TOKENS])
        if len(decoder):  # one key/value column per mask column, none that no row attends to
            assert decoder.cache.layers[0].keys.shape[2] == decoder.mask.shape[1]
            assert bool(decoder.mask[:, 0].any())
        step += 1
    return {owner[h]: ids for h, ids in out.items()}


def alone(hf_model, ids: list[int], **options) -> list[list[int]]:
    new, _ = sampling.sample_ids(
        hf_model.model, hf_model.tokenizer, [ids], max_new_tokens=MAX_TOKENS, **options
    )
    return new


def test_rows_that_join_and_leave_decode_what_they_decode_alone(hf_model):
    tok = hf_model.tokenizer
    ids = {
        name: hf_model.encode_prompt(text)
        for name, text in [
            ("long", LONG),
            ("greedy", "The capital of France is"),
            ("seeded", "Two plus two equals"),
            ("late", "My favourite food is"),
        ]
    }
    seeded = dict(n=2, temperature=0.9, top_p=0.8, seed=11)
    schedule = {
        0: [("long", ids["long"], Block())],
        3: [
            ("greedy", ids["greedy"], Block()),
            ("seeded", ids["seeded"], Block.of(device="cpu", **seeded)),
        ],
        5: [("late", ids["late"], Block())],
    }
    assert supports(hf_model.model)
    got = run(ContinuousDecoder(hf_model.model, tok.pad_token_id), schedule, {tok.eos_token_id})
    for name in ("long", "greedy", "late"):
        assert got[(name, 0)] == alone(hf_model, ids[name], temperature=0.0)[0], name
    want = alone(hf_model, ids["seeded"], **seeded)
    assert [got[("seeded", 0)], got[("seeded", 1)]] == want
    # one of the seeded prompt's rows ended early: the other drew on with the finished one's place kept
    assert len({len(row) for row in want}) > 1


def test_unseeded_rows_draw_from_the_global_random_state(hf_model):
    tok = hf_model.tokenizer
    ids = hf_model.encode_prompt("Two plus two equals")
    samples = []
    for _ in range(2):
        torch.manual_seed(0)
        decoder = ContinuousDecoder(hf_model.model, tok.pad_token_id)
        block = Block.of(3, 1.0, 1.0, None, "cpu")
        samples.append(run(decoder, {0: [("x", ids, block)]}, {tok.eos_token_id}))
    assert samples[0] == samples[1]
    assert len({tuple(samples[0][("x", r)]) for r in range(3)}) > 1  # sampled, not three greedy copies
