"""One DLN-1 iteration: model forward calls and wall time, ours against a naive implementation.

Ours scores every (candidate prompt, example) context in one batched `classify` that reuses each context for
all labels. The naive implementation runs one full forward per (candidate, example, label). Both score the
same candidates (the proposals of one real iteration), side by side in one process; the script prints the
forward counts, the times, their ratios and the largest difference between the two candidate objectives.

    python benchmarks/bench_dln_iteration.py [--task topic] [--candidates 6] [--batch 12]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from dln.backward import propose_prompts
from dln.config import build_config
from dln.data.loading import load_task
from dln.dln1 import dln1_step
from dln.layers import LanguageLayer
from dln.lm import load_model
from dln.scoring import gold_logprobs, label_logprobs
from dln.train import balanced_minibatch, split_batch
from dln.train_config import TrainConfig


class ForwardCounter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        module.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.calls += 1


def naive_objectives(layer, model, prompts, batch) -> np.ndarray:
    tok, net = model.tokenizer, model.model
    out = np.zeros((len(prompts), len(batch.inputs)))
    for p, prompt in enumerate(prompts):
        for i, (x, target, labels) in enumerate(zip(batch.inputs, batch.targets, batch.label_sets)):
            context = model.encode_prompt(layer.render(x, prompt=prompt))
            totals = []
            for label in labels:
                cont = tok(layer.label_text(label), add_special_tokens=False).input_ids
                with torch.inference_mode():
                    ids = torch.tensor([context + cont], device=model.device)
                    logprobs = torch.log_softmax(net(ids).logits[0].float(), -1)
                totals.append(sum(logprobs[len(context) - 1 + k, t].item() for k, t in enumerate(cont)))
            out[p, i] = totals[labels.index(target)] - np.logaddexp.reduce(totals)
    return out.mean(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="topic")
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--batch", type=int, default=12)
    args = parser.parse_args()

    config = build_config(
        TrainConfig,
        {
            "task": args.task,
            "num_candidates": args.candidates,
            "batch_size": args.batch,
            "backward_max_tokens": 80,
        },
    )
    model = load_model("hf:default", cache=False)
    task = load_task(args.task)
    batch = split_batch(
        task.train, task.labels, balanced_minibatch(list(task.train["target"]), args.batch, random.Random(0))
    )
    layer = LanguageLayer(config.initial_prompt, config.template)
    counter = ForwardCounter(model.model.get_decoder())  # every transformer pass, scoring and generation

    start = time.perf_counter()
    dln1_step(layer, model, model, batch, config, task.labels, seed=1)
    step_s, step_calls = time.perf_counter() - start, counter.calls
    # score the same candidate set both ways, for the ratio that scoring alone gives
    prompts = [config.initial_prompt] + propose_prompts(
        model,
        config.initial_prompt,
        [],
        [],
        task.labels,
        num=args.candidates - 1,
        temperature=0.7,
        max_tokens=80,
        seed=1,
    )
    counter.calls = 0
    start = time.perf_counter()
    ours = gold_logprobs(
        label_logprobs(layer, model, prompts, batch.inputs, batch.label_sets), batch.targets, batch.label_sets
    ).mean(axis=1)
    ours_s, ours_calls = time.perf_counter() - start, counter.calls
    counter.calls = 0
    start = time.perf_counter()
    naive = naive_objectives(layer, model, prompts, batch)
    naive_s, naive_calls = time.perf_counter() - start, counter.calls

    labels = len(task.labels)
    print(
        f"task {args.task}: {len(prompts)} candidates x {args.batch} examples x {labels} labels, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"one full DLN-1 iteration (proposals + scoring): {step_s:7.2f} s, {step_calls} model forwards")
    print(f"candidate scoring, ours:  {ours_s:7.2f} s, {ours_calls:5d} forwards")
    print(f"candidate scoring, naive: {naive_s:7.2f} s, {naive_calls:5d} forwards")
    # a naive iteration makes the same proposals and scores them one (candidate, example, label) at a time
    naive_step_s = step_s - ours_s + naive_s
    naive_step_calls = step_calls - ours_calls + naive_calls
    print(
        f"one full DLN-1 iteration, naive scoring: {naive_step_s:7.2f} s, {naive_step_calls} model forwards; "
        f"ratio naive/ours: time {naive_step_s / step_s:.1f}x, forwards {naive_step_calls / step_calls:.1f}x"
    )
    print(
        f"ratio naive/ours, scoring alone: time {naive_s / ours_s:.1f}x, "
        f"forwards {naive_calls / max(ours_calls, 1):.1f}x; "
        f"max |diff| of objectives {np.abs(naive - ours).max():.2e}"
    )


if __name__ == "__main__":
    main()
