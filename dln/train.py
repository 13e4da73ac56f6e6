"""Prompt training from a config: DLN-1, DLN-2 and the zero-shot / in-context baselines, resumable.

    trainer = PromptTrainer(config, "runs/navigate")
    program = trainer.fit()          # writes config.yaml, metrics.jsonl, checkpoint.json, program.json

Everything random is derived from (seed, iteration): the minibatch and the proposals' sampling seed. A killed
run restarts from its last checkpoint and, with the request cache, redoes no model call it already made; its
final program equals the uninterrupted run's.
"""

from __future__ import annotations

import random
from collections import defaultdict

from tqdm.auto import tqdm

from dln.backward import Example, with_examples
from dln.config import dump_yaml
from dln.data.loading import Task, example_labels, load_task
from dln.dln1 import Batch, dln1_step
from dln.dln2 import dln2_step
from dln.errors import DLNError
from dln.layers import LanguageLayer
from dln.lm import LanguageModel, load_model
from dln.program import Program, load_program
from dln.rundir import RunDir, Stopwatch
from dln.train_config import TrainConfig


def split_batch(split, labels: list[str], indices: list[int] | None = None) -> Batch:
    rows = split if indices is None else split.select(indices)
    return Batch(list(rows["input"]), list(rows["target"]), example_labels(rows, labels))


def balanced_minibatch(targets: list[str], size: int, rng: random.Random) -> list[int]:
    """Round-robin over the classes (each shuffled), so every label is shown as often as possible."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, target in enumerate(targets):
        by_class[target].append(i)
    pools = [rng.sample(v, len(v)) for _, v in sorted(by_class.items())]
    picked: list[int] = []
    while len(picked) < min(size, len(targets)):
        for pool in pools:
            if pool and len(picked) < size:
                picked.append(pool.pop())
    return sorted(picked)


def accuracy(program: Program, batch: Batch) -> float:
    """The share of `batch` the program answers with its target: dev selection, `dln eval` and benchmarks."""
    answers = program.predict(batch.inputs, batch.label_sets)
    return sum(a == t for a, t in zip(answers, batch.targets)) / len(answers)


def dev_subset(dev, size: int) -> list[int] | None:
    """The dev examples that pick the best prompt: all of them, or a fixed class-balanced subset of `size`.

    A plain prefix of a small dev split can lean to one label (navigate's first 40: 68% "Yes"), and then the
    restore keeps whichever prompt shifts the model's label bias that way instead of a better prompt.
    The subset is the same for every seed and method, so their dev accuracies compare.
    """
    if not size or size >= len(dev):
        return None
    return balanced_minibatch(list(dev["target"]), size, random.Random("dev"))


def icl_prompt(config: TrainConfig, task: Task) -> str:
    rng = random.Random(config.seed)
    shots = balanced_minibatch(list(task.train["target"]), config.icl_shots, rng)
    rows = task.train.select(shots)
    return with_examples(
        config.initial_prompt, [Example(x, y) for x, y in zip(rows["input"], rows["target"])]
    )


def remember(state: dict, prompt: str, dev_accuracy: float, size: int) -> None:
    """Keep the `size` best distinct output prompts seen on dev in `state["memory"]` (DLN-1's candidates
    from earlier iterations: the paper's `use_memory`, a way back from a bad step)."""
    kept = [m for m in state.get("memory", []) if m["prompt"] != prompt]
    kept.append({"prompt": prompt, "dev_accuracy": dev_accuracy})
    state["memory"] = sorted(kept, key=lambda m: -m["dev_accuracy"])[:size]


class PromptTrainer:
    """Trains the program a `TrainConfig` describes into a run directory."""

    def __init__(
        self,
        config: TrainConfig,
        out: str,
        *,
        model: LanguageModel | None = None,
        backward: LanguageModel | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.run = RunDir(out)
        self.task = load_task(config.task, train=config.train, dev=config.dev, test=config.test)
        self.source = load_program(config.init_from) if config.init_from else None  # fails before loading
        if len(self.task.train) == 0 or len(self.task.dev) == 0:
            raise DLNError("the train and dev splits must not be empty")
        self.model = model or load_model(config.model, **config.model_options())
        self.backward = backward or (
            load_model(config.backward_model, **config.model_options())
            if config.backward_model
            else self.model
        )
        self.progress = progress
        self.dev_batch = split_batch(
            self.task.dev, self.task.labels, dev_subset(self.task.dev, config.dev_size)
        )

    # -- the program being trained -------------------------------------------------------------------
    def initial_prompts(self) -> dict[str, str | None]:
        """The prompts iteration 0 evaluates: the config's, a finished run's (`init_from`), or ICL's."""
        config = self.config
        output, hidden = config.initial_prompt, config.hidden_prompt
        if self.source is not None:
            output = self.source.output.prompt
            hidden = self.source.hidden.prompt if self.source.hidden is not None else hidden
        if config.method == "icl":
            output = icl_prompt(config, self.task)
        return {"output": output, "hidden": hidden if config.method == "dln2" else None}

    def program(self, prompts: dict[str, str | None]) -> Program:
        config = self.config
        hidden = (
            LanguageLayer(prompts["hidden"], config.hidden_template)
            if prompts.get("hidden") is not None
            else None
        )
        return Program(
            model_uri=config.model,
            model_options=config.model_options(),
            output=LanguageLayer(prompts["output"], config.template),
            labels=self.task.labels,
            hidden=hidden,
            hidden_max_tokens=config.hidden_max_tokens,
            metadata={"method": config.method, "task": self.task.name, "seed": config.seed},
        ).bind(self.model)

    def dev_accuracy(self, prompts: dict[str, str | None]) -> float:
        return accuracy(self.program(prompts), self.dev_batch)

    # -- budget --------------------------------------------------------------------------------------
    def projected_calls(self) -> dict[str, int]:
        """Backend requests the run will make at most (before the cache): generations and scored contexts."""
        c = self.config
        if c.method in ("zero_shot", "icl"):
            return {"generations": 0, "scored_contexts": len(self.dev_batch.inputs)}
        evals = c.iterations // c.eval_every + 2
        dev = len(self.dev_batch.inputs)
        if c.method == "dln1":
            return {
                "generations": c.iterations * (c.num_candidates - 1),
                "scored_contexts": c.iterations * c.num_candidates * c.batch_size + evals * dev,
            }
        bk = c.batch_size * c.num_hidden_samples
        forward = c.batch_size if c.output_ranking == "forward" else 0  # the greedy hidden texts it ranks on
        if c.hidden_ranking == "forward":  # each hidden-prompt candidate's greedy texts (at most the batch)
            forward += c.num_candidates * c.batch_size
        return {
            "generations": c.iterations * (bk + forward + 2 * (c.num_candidates - 1)) + evals * dev,
            "scored_contexts": c.iterations * (3 * bk + 2 * c.num_candidates * bk) + evals * dev,
        }

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> Program:
        """Train (resuming from the checkpoint), restore the best prompt seen on dev, save the program."""
        config = self.config
        resuming = self.run.start(dump_yaml(config))
        state = self.run.load_checkpoint() if resuming else None
        clock = Stopwatch(state.get("seconds", 0.0) if state else 0.0)
        state = state or self._initial_state(clock)
        iterations = config.iterations if config.method in ("dln1", "dln2") else 0
        layers = self.program(state["prompts"])
        bar = tqdm(
            total=iterations,
            initial=state["iteration"],
            desc=f"{config.method} {self.task.name}",
            disable=not self.progress,
            unit="it",
        )
        bar.set_postfix(dev=f"{state['best']['dev_accuracy']:.3f}")
        for iteration in range(state["iteration"] + 1, iterations + 1):
            metrics = self._step(layers, iteration, state)
            prompts = {
                "output": layers.output.prompt,
                "hidden": layers.hidden.prompt if layers.hidden else None,
            }
            record = {"iteration": iteration, **metrics}
            if iteration % config.eval_every == 0 or iteration == iterations:
                record["dev_accuracy"] = self.dev_accuracy(prompts)
                remember(state, prompts["output"], record["dev_accuracy"], config.memory)
                if record["dev_accuracy"] > state["best"]["dev_accuracy"]:
                    state["best"] = {
                        "prompts": prompts,
                        "dev_accuracy": record["dev_accuracy"],
                        "iteration": iteration,
                    }
            state.update(iteration=iteration, prompts=prompts, seconds=clock.total())
            record["seconds"] = state["seconds"]
            self.run.log(record)
            self.run.save_checkpoint(state)
            bar.update(1)
            bar.set_postfix(
                loss=f"{-metrics['objective']:.3f}",
                dev=f"{record.get('dev_accuracy', float('nan')):.3f}",
                best=f"{state['best']['dev_accuracy']:.3f}",
            )
        return self._finish(bar, state)

    def _initial_state(self, clock: Stopwatch) -> dict:
        """Iteration 0: the initial prompts and their dev accuracy, logged and checkpointed."""
        prompts = self.initial_prompts()
        dev = self.dev_accuracy(prompts)
        state = {
            "iteration": 0,
            "prompts": prompts,
            "best": {"prompts": prompts, "dev_accuracy": dev, "iteration": 0},
            "seconds": clock.total(),
        }
        remember(state, prompts["output"], dev, self.config.memory)
        self.run.log({"iteration": 0, "dev_accuracy": dev, "seconds": state["seconds"]})
        self.run.save_checkpoint(state)
        return state

    def _step(self, layers: Program, iteration: int, state: dict) -> dict:
        """One DLN-1 or DLN-2 update of `layers` on the class-balanced minibatch of this iteration."""
        config = self.config
        rng = random.Random(f"{config.seed}-{iteration}")
        train_targets = list(self.task.train["target"])
        batch = split_batch(
            self.task.train, self.task.labels, balanced_minibatch(train_targets, config.batch_size, rng)
        )
        seed = config.seed * 100_003 + iteration
        memory = [m["prompt"] for m in state.get("memory", [])]
        if config.method == "dln1":
            return dln1_step(
                layers.output, self.model, self.backward, batch, config, self.task.labels, seed, memory
            )
        return dln2_step(
            layers.hidden,
            layers.output,
            self.model,
            self.backward,
            batch,
            config,
            self.task.labels,
            seed,
            memory,
        )

    def _finish(self, bar, state: dict) -> Program:
        bar.close()
        program = self.program(state["best"]["prompts"])  # restore the best prompt seen on dev
        program.metadata.update(
            best_iteration=state["best"]["iteration"], dev_accuracy=state["best"]["dev_accuracy"]
        )
        program.save(self.run.program_file)
        return program
