"""What DLN-2's importance weights look like on a real model: ESS of `exact` against `per_token` weights.

For B training examples of a task (its `configs/dln2/` config with the initial prompts), draw K hidden texts
from q(h | x, y) and compute the three terms of log w exactly as `dln2_step` does (`posterior_terms`, the
same code), then report, per weighting: Kish's ESS over the K samples (1 = argmax, K = uniform), and the
spread across samples of each term, which says which term decides the weights.

    python benchmarks/dln2_weights.py --task sentiment --examples 24 --samples 8
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from dln import vi
from dln.config import build_config, read_yaml
from dln.data.loading import load_task
from dln.dln2 import log_weights, posterior_terms
from dln.layers import LanguageLayer
from dln.lm import load_model
from dln.rundir import Stopwatch
from dln.train import balanced_minibatch, split_batch
from dln.train_config import TrainConfig


def spread(values: np.ndarray, k: int) -> float:
    """Mean over examples of the within-example standard deviation across the K samples."""
    return float(values.reshape(-1, k).std(axis=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--model", default="hf:default")
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--samples", type=int, default=8, help="K hidden texts per example")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    values = {**read_yaml(f"configs/dln2/{args.task}.yaml"), "model": args.model}
    config = build_config(TrainConfig, {**values, "num_hidden_samples": args.samples, "seed": args.seed})
    task = load_task(config.task)
    model = load_model(config.model, cache=False)
    rng = random.Random(args.seed)
    batch = split_batch(
        task.train, task.labels, balanced_minibatch(list(task.train["target"]), args.examples, rng)
    )
    hidden = LanguageLayer(config.hidden_prompt, config.hidden_template)
    output = LanguageLayer(config.initial_prompt, config.template)
    clock = Stopwatch()
    texts, ids, _, log_p_y, log_p_h, log_q = posterior_terms(hidden, output, model, batch, config, args.seed)
    k = args.samples
    print(
        f"task {args.task}, {config.model}, {len(batch.inputs)} examples x K={k} hidden texts at T="
        f"{config.hidden_temperature}, max {config.hidden_max_tokens} tokens ({clock.total():.0f} s)"
    )
    lengths = np.array([len(t) for t in ids], dtype=np.float64)
    print(
        f"h length {lengths.mean():.1f} tokens; within-example std over the K samples: "
        f"log p(y|x,h) {spread(log_p_y, k):.2f}, log p(h|x) {spread(log_p_h, k):.2f}, "
        f"log q {spread(log_q, k):.2f}, log p(h|x) - log q {spread(log_p_h - log_q, k):.2f} nats"
    )
    print("| weights | ESS mean | ESS median | ESS min | ESS max | share of examples with ESS < 1.5 |")
    print("|---|---|---|---|---|---|")
    for kind in ("exact", "per_token"):
        log_w = torch.tensor(log_weights(log_p_y, log_p_h, log_q, ids, kind)).reshape(-1, k)
        ess = vi.effective_sample_size(log_w).numpy()
        print(
            f"| {kind} | {ess.mean():.2f} | {np.median(ess):.2f} | {ess.min():.2f} | {ess.max():.2f} | "
            f"{(ess < 1.5).mean():.2f} |"
        )


if __name__ == "__main__":
    main()
