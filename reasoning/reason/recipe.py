"""`objective: variational_sft`, the paper's offline recipe (arXiv:2509.22637), in five cached stages.

    prior       π_θ0: SFT of the base model on the gold traces (`steps` updates: the SFT baseline itself)
    posterior   q_φ(z | x, y): SFT of the base model on the same gold traces, the answer in the prompt
                (`steps` updates)
    traces      K = `k` traces per training question from q_φ (every question, gold or answer-only)
    weights     the terms of ρ_k = π̂_θ0(y | x, z_k) π_θ0(z_k | x) / q_φ(z_k | x, y) (`reasoning.reason.rho`)
    final       π: SFT of the base model (or of π_θ0: `final_init: prior`) for `steps` updates on gold +
                the chosen q-traces (`final_data`)

Every stage lives in the run directory and is skipped when it is finished: prior/, posterior/ and
final-<estimator>-<ratio>-<data>/ are `ReasonTrainer` runs (checkpointed and resumed by the loop),
traces/ and weights/ hold one JSON file per chunk of questions, written atomically, and `stages.json`
records each finished stage's summary and wall time. Runs on one directory may differ in the final stage's
keys only (`FINAL_STAGE_KEYS`: `rho_estimator`, `rho_ratio`, `final_data`, ...): they share the first four
stages. The latest final stage's adapter is copied to policy/ and its evaluation to eval.json, so
`dln reason eval --run` reads the run like any other.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from dln.atomic import atomic_write_json
from dln.rundir import RunDir
from reasoning.reason.config import FINAL_STAGE_KEYS, ReasonConfig
from reasoning.reason.rho import final_rows, score_traces
from reasoning.reason.tasks import answer_only, posterior_prompt, task_of

CHUNK = 16  # questions per traces/ and weights/ file


class VariationalSFT:
    """The recipe's stages on one run directory; `fit()` runs the unfinished ones and returns a summary."""

    def __init__(self, config: ReasonConfig, run_dir: str | Path) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.rows = answer_only(list(task_of(config).train), config.gold_count)
        self.stages_file = self.run_dir / "stages.json"
        c = config
        self.final_name = f"final-{c.rho_estimator}-{c.rho_ratio}-{c.final_data}"
        self.final_name += "-checked" if c.check_working else ""
        self.final_name += "-from-prior" if c.final_init == "prior" else ""
        self.final_name += f"-lr{c.final_lr:g}" if c.final_lr else ""
        self._policy = None

    def stages(self) -> dict:
        return json.loads(self.stages_file.read_text()) if self.stages_file.is_file() else {}

    def fit(self, stop_after: str | None = None) -> dict:
        """Run every unfinished stage in order (`stop_after`: end after that stage, as a kill would)."""
        RunDir(self.run_dir).start(self.config, ignored=ReasonConfig.RESUME_IGNORED + FINAL_STAGE_KEYS)
        done = self.stages()
        for name, stage in [
            ("prior", self.prior),
            ("posterior", self.posterior),
            ("traces", self.traces),
            ("weights", self.weights),
            (self.final_name, self.final),
        ]:
            if name not in done:
                start = time.time()
                done[name] = {**stage(), "seconds": round(time.time() - start, 2)}
                atomic_write_json(self.stages_file, done)
            if name == stop_after:
                return {"run": str(self.run_dir), "finished": False, "stages": done}
        self._publish()
        final = done[self.final_name]
        return {
            "run": str(self.run_dir),
            "objective": "variational_sft",
            "finished": True,
            "final": self.final_name,
            "eval": final.get("eval"),
            "prior_eval": done["prior"].get("eval"),
            "stages": done,
        }

    # -- stages ---------------------------------------------------------------------------------------
    def _sft(self, name: str, eval_size: int, config: ReasonConfig | None = None, **kwargs) -> dict:
        from reasoning.reason.trainer import ReasonTrainer

        config = replace(config or self.config, objective="sft", eval_size=eval_size)
        summary = ReasonTrainer(config, self.run_dir / name, **kwargs).fit()
        return {k: summary[k] for k in ("step", "train_seconds", "eval") if k in summary}

    def prior(self) -> dict:
        """π_θ0: SFT on the gold traces (evaluated: it is the SFT baseline)."""
        return self._sft("prior", self.config.eval_size)

    def posterior(self) -> dict:
        """q_φ(z | x, y): SFT on the gold traces with the answer as a hint."""
        return self._sft("posterior", 0, hint=True)

    def policy(self):
        """π_θ0 and q_φ on one base model, adapters `prior` and `posterior` (loaded once)."""
        if self._policy is None:
            from reasoning.finetune.policy import Policy
            from reasoning.reason.completions import CompletionIds

            self._policy = Policy.load(self.config, adapters=("prior", "posterior"))
            for name in ("prior", "posterior"):
                self._policy.load_adapter_weights(name, self.run_dir / name / "policy")
            self._policy.model.eval()
            self.ids = CompletionIds(self._policy.tokenizer)
        return self._policy

    def _chunks(self, folder: str):
        """(index, rows, path) of every chunk of questions whose file in `folder` is not written yet."""
        root = self.run_dir / folder
        root.mkdir(parents=True, exist_ok=True)
        for index, start in enumerate(range(0, len(self.rows), CHUNK)):
            path = root / f"chunk-{index:05d}.json"
            if not path.is_file():
                yield index, self.rows[start : start + CHUNK], path

    def _read(self, folder: str) -> list:
        files = sorted((self.run_dir / folder).glob("chunk-*.json"))
        return [item for path in files for item in json.loads(path.read_text())]

    def _seed(self, index: int, stage: int) -> int:
        """The sampling seed of chunk `index` in stage `stage` (1: traces, 2: weights)."""
        from reasoning.reason.trainer import derived_seed

        return derived_seed(self.config.seed, index, stage)

    def traces(self) -> dict:
        """K traces per question from q_φ at the config's temperature/top_p, cut before `Answer`."""
        from reasoning.reason.tasks import is_correct

        c = self.config
        for index, rows, path in self._chunks("traces"):
            policy = self.policy()
            hints = policy.encode_prompts([posterior_prompt(r["question"], r["answer"]) for r in rows])
            with policy.use("posterior"):
                samples = policy.sample(
                    hints, n=c.k, max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                    top_p=c.top_p, seed=self._seed(index, 1),
                )  # fmt: skip
            records = [
                {
                    "traces": [self.ids.cut_trace(ids) for ids in group],
                    "texts": [policy.decode(self.ids.cut_trace(ids)) for ids in group],
                    "q_correct": [is_correct(policy.decode(ids), r["answer"]) for ids in group],
                }
                for r, group in zip(rows, samples)
            ]
            atomic_write_json(path, records)
        records = self._read("traces")
        flags = [f for r in records for f in r["q_correct"]]
        # q copies `Answer: y` from its hint: whether the trace itself ends at y is the faithful measure
        reach = [
            is_correct(t, r["answer"], strict=False)
            for r, rec in zip(self.rows, records)
            for t in rec["texts"]
        ]
        lengths = [len(z) for r in records for z in r["traces"]]
        return {
            "q_accuracy_with_hint": sum(flags) / len(flags),
            "q_trace_reaches_answer": sum(reach) / len(reach),
            "trace_len": sum(lengths) / len(lengths),
        }

    def weights(self) -> dict:
        """The terms of ρ of every trace (`rho.score_traces`); acc's continuations are the sampling here."""
        traces, timings = self._read("traces"), {"sampling": 0.0}
        for index, rows, path in self._chunks("weights"):
            group = [t["traces"] for t in traces[index * CHUNK : index * CHUNK + len(rows)]]
            seed = self._seed(index, 2)
            terms = score_traces(self.policy(), self.ids, rows, group, self.config, seed, timings)
            atomic_write_json(path, terms)
        terms = [t for group in self._read("weights") for t in group]
        accs = [t["acc"] for t in terms if t["acc"] is not None]
        return {
            "prior_answer_gml": sum(_exp_mean(t) for t in terms) / len(terms),
            "prior_acc_after_trace": sum(accs) / len(accs) if accs else None,  # of the traces scored
            "acc_skipped": sum(1 for t in terms if t.get("skipped")),  # check_working: wrong working
            "sampling_seconds": round(timings["sampling"], 2),  # acc's continuations (this call's chunks)
        }

    def final(self) -> dict:
        """π: SFT of the base model (or of π_θ0) on gold + the chosen q-traces, `steps` updates, evaluated."""
        self._policy = None  # the stage loads its own model
        texts = [t["texts"] for t in self._read("traces")]
        data, stats = final_rows(self.rows, texts, self._read("weights"), self.config)
        atomic_write_json(self.run_dir / self.final_name / "data.json", {"stats": stats, "rows": data})
        c = self.config
        config = replace(c, lr=c.final_lr or c.lr)
        if c.final_init == "prior":  # π_θ0's adapter, the prior stage's policy/
            config = replace(config, init_policy=str(self.run_dir / "prior" / "policy"))
        trained = self._sft(self.final_name, c.eval_size, config, train_rows=data)
        return {**trained, "data": stats}

    def _publish(self) -> None:
        """Copy the final stage's adapter to policy/ and its evaluation to eval.json (atomically)."""
        source = self.run_dir / self.final_name
        tmp = self.run_dir / "policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source / "policy", tmp)
        shutil.rmtree(self.run_dir / "policy", ignore_errors=True)
        tmp.rename(self.run_dir / "policy")
        if (source / "eval.json").is_file():
            shutil.copyfile(source / "eval.json", self.run_dir / "eval.json")


def _exp_mean(term: dict) -> float:
    """GML of one trace: exp of the mean token log-prob of the y-part under π_θ0."""
    import math

    return math.exp(term["log_y"] / max(term["y_len"], 1))
