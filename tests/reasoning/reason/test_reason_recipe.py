"""The offline recipe (`objective: variational_sft`) on the default model, tiny: every stage is cached in
the run directory, a re-run after a kill skips the finished stages, runs that differ in the final stage's
keys share the first four, and a change to an earlier stage's key is refused."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dln.errors import DLNError
from reasoning.reason.config import ReasonConfig
from reasoning.reason.recipe import VariationalSFT
from reasoning.reason.tasks import is_correct
from reasoning.reason.trainer import ReasonTrainer

pytestmark = pytest.mark.slow

TINY = dict(
    objective="variational_sft", n_train=3, n_test=2, steps=1, batch_size=2, k=2, acc_samples=1,
    max_new_tokens=6, eval_size=0, progress=False, gold_count=1, lr=1e-3,
)  # fmt: skip


def test_recipe_stages_are_cached_and_a_rerun_skips_the_finished_ones(tmp_path, monkeypatch):
    config = ReasonConfig(**TINY)
    first = VariationalSFT(config, tmp_path).fit(stop_after="traces")  # "killed" after the traces stage
    assert not first["finished"] and list(first["stages"]) == ["prior", "posterior", "traces"]
    chunk = tmp_path / "traces" / "chunk-00000.json"
    written, stamp = chunk.read_bytes(), chunk.stat().st_mtime_ns
    assert len(json.loads(written)) == 3 and all(len(r["traces"]) == 2 for r in json.loads(written))

    fitted, real_fit = [], ReasonTrainer.fit

    def recording_fit(self, *args, **kwargs):
        fitted.append(self.run_dir.name)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(ReasonTrainer, "fit", recording_fit)
    done = VariationalSFT(config, tmp_path).fit()
    assert fitted == ["final-gml-normalized-mix"]  # π_θ0 and q_φ were not trained again
    assert chunk.read_bytes() == written and chunk.stat().st_mtime_ns == stamp  # nor the traces resampled
    assert done["finished"] and (tmp_path / "policy" / "adapter_config.json").is_file()
    data = json.loads((tmp_path / "final-gml-normalized-mix" / "data.json").read_text())
    assert data["stats"]["questions"] == 3 and data["stats"]["gold_rows"] == 1
    texts = [r["texts"] for r in json.loads(written)]
    q_rows = data["rows"][1:]  # after the one gold row: one top-ρ trace per question
    assert len(q_rows) == data["stats"]["with_trace"] == 3
    assert all(row["trace"] in group for row, group in zip(q_rows, texts))
    answers = [r["answer"] for r in VariationalSFT(config, tmp_path).rows]
    reached = [is_correct(t, a, strict=False) for a, group in zip(answers, texts) for t in group]
    assert done["stages"]["traces"]["q_trace_reaches_answer"] == sum(reached) / len(reached)

    fitted.clear()
    other = replace(config, rho_estimator="likelihood", rho_ratio="exact", final_data="weighted")
    assert VariationalSFT(other, tmp_path).fit()["final"] == "final-likelihood-exact-weighted"
    assert fitted == ["final-likelihood-exact-weighted"]  # the first four stages are shared
    weighted = json.loads((tmp_path / "final-likelihood-exact-weighted" / "data.json").read_text())
    assert all(sum(r["weights"]) == pytest.approx(1.0) for r in weighted["rows"][1:])

    fitted.clear()  # the final π from π_θ0: at a vanishing rate it is π_θ0's adapter, from the base it is not
    warm = replace(config, final_init="prior", final_lr=1e-12)
    assert VariationalSFT(warm, tmp_path).fit()["final"] == "final-gml-normalized-mix-from-prior-lr1e-12"
    assert fitted == ["final-gml-normalized-mix-from-prior-lr1e-12"]
    prior = _adapter(tmp_path / "prior")
    assert _max_diff(_adapter(tmp_path / "final-gml-normalized-mix-from-prior-lr1e-12"), prior) < 1e-6
    assert _max_diff(_adapter(tmp_path / "final-gml-normalized-mix"), prior) > 1e-3
    with pytest.raises(DLNError, match="different config"):
        VariationalSFT(replace(config, k=3), tmp_path).fit()


def _adapter(stage) -> dict:
    from safetensors.torch import load_file

    return load_file(str(stage / "policy" / "adapter_model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
