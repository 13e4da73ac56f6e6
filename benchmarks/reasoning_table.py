"""Held-out accuracy of every reasoning method on one budget, as a table: full gold or semi-supervised.

Every method trains from `configs/reason/<objective>.yaml` with the same overrides: the same number of π
updates, questions per update and traces per question (the ELBO draws K = 1), the same seed, learning
rate, task and gold data. The variational online runs also spend `--warmup` SFT updates warming q up on
gold traces; the paper's recipe (`variational_sft`, methods `vsft-<estimator>-<data>`) trains π_θ0 and q_φ
for `--steps` SFT updates each before its final π gets its `--steps` updates, and its variants share one
run directory per seed (the first four stages run once).

`sft@sft`, `rft@sft`, `grpo@sft`, `star@sft` start π from the SFT run of the same seed (`init_policy`)
and give it `--steps` more updates: the recipe's budget (π_θ0's updates, then the final π's), for the
usual practice of RL or STaR after SFT, at `--warm-lr` (RL after SFT usually runs at a lower rate than
SFT); `sft@sft` is SFT itself at that budget (its gold traces again), the baseline the others' extra
updates must beat. `vsft-...@sft` is the recipe whose final π starts from π_θ0 (`final_init: prior`,
`final_lr` = `--warm-lr`): the same updates of π, with q's traces as the data after SFT.

Regimes: `--gold-count -1` (full gold: every training question has its gold trace) or `--gold-count N`
(semi-supervised: gold traces for the first N questions, answers only for the rest; SFT and the warm-ups
see the N, RFT, GRPO, STaR and the recipe every answer).

Each run writes `<out>/seed-<s>/<method>/` and one line of `<out>/results.jsonl`; a (method, seed) already
in that file is not run again (delete the line to redo).

Example (the README's reduced table):
    OMP_NUM_THREADS=2 python benchmarks/reasoning_table.py --task word_chain --n-train 48 --steps 12 \
        --batch-size 4 --k 4 --eval-size 60 --methods base,sft,vsft-gml-mix,vsft-acc-mix --out runs/rt-full
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from dln.lm.hardware import native_bf16

RECIPE = [f"vsft-{e}-{d}" for d in ("mix", "weighted", "paired") for e in ("gml", "acc")]
# check_working: no trace with a wrong equation
RECIPE += [f"vsft-{e}-{d}-checked" for d in ("mix", "weighted", "paired") for e in ("gml", "acc")]
METHODS = ["base", "sft", "rft", "grpo", "grpo_trl", "star", "elbo", "iwae", "forward_kl", *RECIPE]
#: `<method>@sft`: π starts from the SFT run of the same seed (`init_policy`), then gets `--steps` updates
WARM = ["sft@sft", "rft@sft", "grpo@sft", "star@sft"]  # sft@sft: SFT given the same budget of updates
WARM += [f"{m}@sft" for m in RECIPE]  # the recipe's final π starts from π_θ0 (`final_init: prior`)
#: `<baseline>-checked`: the on-policy baselines with the recipe's verifier (`check_working`: reward 0 for a
#: sample with a wrong equation), so a checked recipe row has a checked baseline to beat
CHECKED = [f"{m}-checked" for m in ("rft", "grpo", "star")]
CHECKED += [f"{m}-checked@sft" for m in ("rft", "grpo", "star")]
LABELS = {
    "base": "base model",
    "sft": "SFT (gold traces)",
    "rft": "RFT",
    "grpo": "GRPO (in-loop)",
    "grpo_trl": "GRPO (TRL GRPOTrainer)",
    "star": "STaR (rationalisation)",
    "elbo": "ELBO (K=1)",
    "iwae": "IWAE",
    "forward_kl": "forward KL + multi-trace",
    "vsft-gml-mix": "recipe, GML, mix",
    "vsft-acc-mix": "recipe, Acc, mix",
    "vsft-gml-weighted": "recipe, GML, weighted",
    "vsft-acc-weighted": "recipe, Acc, weighted",
    "vsft-gml-paired": "recipe, GML, paired",
    "vsft-acc-paired": "recipe, Acc, paired",
    "vsft-gml-mix-checked": "recipe, GML, mix, working checked",
    "vsft-acc-mix-checked": "recipe, Acc, mix, working checked",
    "vsft-gml-weighted-checked": "recipe, GML, weighted, working checked",
    "vsft-acc-weighted-checked": "recipe, Acc, weighted, working checked",
    "vsft-gml-paired-checked": "recipe, GML, paired, working checked",
    "vsft-acc-paired-checked": "recipe, Acc, paired, working checked",
    "sft@sft": "SFT, twice the updates",
    "rft@sft": "RFT after SFT",
    "grpo@sft": "GRPO after SFT",
    "star@sft": "STaR after SFT",
}
LABELS.update({m: LABELS[m.replace("-checked", "")] + ", working checked" for m in CHECKED})
LABELS.update({f"{m}@sft": LABELS[m] + ", final π from π_θ0" for m in RECIPE})


def config_of(method: str, seed: int, args: argparse.Namespace, init_policy: str = ""):
    from dln.config import load_config
    from reasoning.reason.config import ReasonConfig

    method, warm = method.removesuffix("@sft"), method.endswith("@sft")
    checked = not method.startswith("vsft-") and method.endswith("-checked")
    method = method.removesuffix("-checked") if checked else method
    if warm and not init_policy and not method.startswith("vsft-"):
        raise ValueError(f"{method}@sft needs the SFT run's adapter (init_policy)")
    objective = "variational_sft" if method.startswith("vsft-") else ("sft" if method == "base" else method)
    budget = dict(
        steps=args.steps, batch_size=args.batch_size, eval_size=args.eval_size, lr=args.lr, seed=seed,
        max_new_tokens=args.max_new_tokens, posterior_warmup_steps=args.warmup, progress=False,
        task=args.task, n_train=args.n_train, n_test=max(args.eval_size, 1), gold_count=args.gold_count,
        bf16=args.bf16, temperature=args.temperature,
    )  # fmt: skip
    if objective not in ("elbo", "sft"):
        budget["k"] = args.k
    if checked:
        budget["check_working"] = True
    if warm and not method.startswith("vsft-"):  # `run_method` trains the SFT run first, gives its adapter
        budget["init_policy"] = init_policy
        budget["lr"] = args.lr if args.warm_lr is None else args.warm_lr
    if objective == "variational_sft":
        _, estimator, data, *checked = method.split("-")
        budget.update(rho_estimator=estimator, final_data=data, rho_ratio=args.ratio, acc_samples=args.m)
        budget["check_working"] = bool(checked)
        if warm:  # the final π starts from π_θ0 (the SFT run) at the rate of the other rows after SFT
            budget.update(final_init="prior", final_lr=args.warm_lr or 0.0)
        else:  # from the base model at the run's rate (the paper), whatever the shipped config says
            budget.update(final_init="base", final_lr=0.0)
    return load_config(ReasonConfig, Path(args.configs) / f"{objective}.yaml", budget)


def prior_stage(seed: int, args: argparse.Namespace, out: Path) -> dict:
    """The recipe's prior stage of this seed (π_θ0, the SFT run on the gold traces), trained once and shared
    by the SFT row, the recipe rows and the `@sft` rows; its summary."""
    from reasoning.reason.recipe import VariationalSFT

    prior = VariationalSFT(config_of(RECIPE[0], seed, args), out / "variational_sft").fit("prior")
    return prior["stages"]["prior"]


def run_method(method: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    from reasoning.reason.trainer import ReasonTrainer

    start, init_policy = time.time(), ""
    if method.endswith("@sft") and not method.startswith("vsft-"):  # π starts from this seed's SFT run
        prior_stage(seed, args, out)
        init_policy = str(out / "variational_sft" / "prior" / "policy")
    config = config_of(method, seed, args, init_policy)
    if method == "base":
        from reasoning.finetune.policy import Policy
        from reasoning.reason.evaluate import evaluate
        from reasoning.reason.tasks import task_of

        policy = Policy.load(config, adapters=("policy",))
        result = evaluate(policy, task_of(config).test, None, args.eval_size, args.max_new_tokens)
        return {"method": method, "seed": seed, **result, "train_seconds": 0.0}
    extra = {}
    if method == "sft" and args.sft_from_recipe:  # the recipe's π_θ0 is this very SFT run: train it once
        stage = prior_stage(seed, args, out)
        return {"method": method, "seed": seed, **stage["eval"], "train_seconds": stage["train_seconds"]}
    if method.startswith("vsft-"):
        from reasoning.reason.recipe import VariationalSFT

        summary = VariationalSFT(config, out / "variational_sft").fit()
        stages = summary["stages"]
        extra = {
            "stages": {k: v["seconds"] for k, v in stages.items()},
            "prior_accuracy": stages["prior"]["eval"]["accuracy"],
            "q_accuracy_with_hint": stages["traces"]["q_accuracy_with_hint"],
            "q_trace_reaches_answer": stages["traces"].get("q_trace_reaches_answer"),
            "q_trace_len": stages["traces"]["trace_len"],  # trace_len: the held-out one, as in every row
            "weights": stages["weights"],
            "data": stages[summary["final"]]["data"],
        }
        summary["train_seconds"] = sum(v["seconds"] for v in stages.values())
    elif method == "grpo_trl":
        from reasoning.reason.grpo_trl import train_grpo_trl

        summary = train_grpo_trl(config, out / method)
    else:
        summary = ReasonTrainer(config, out / method.replace("@", "-after-")).fit()
        extra = {"last": summary.get("last", {})}
    return {
        "method": method,
        "seed": seed,
        **summary["eval"],
        "train_seconds": summary["train_seconds"],
        "seconds": round(time.time() - start, 1),
        **extra,
    }


def _cell(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f}" + (f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else "")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def table(rows: list[dict], args: argparse.Namespace) -> str:
    regime = "full gold" if args.gold_count < 0 else f"{args.gold_count} gold traces, answers for the rest"
    lines = [
        f"Task {args.task}, {args.n_train} training questions ({regime}); {args.steps} π updates x "
        f"{args.batch_size} questions, K={args.k}, T={args.temperature}, lr {args.lr}, max "
        f"{args.max_new_tokens} new tokens; "
        f"held-out: first {args.eval_size} test questions, greedy; seeds {args.seeds}.",
        "",
        "| method | accuracy % (strict) | accuracy % (last number) | train s (all stages) |",
        "|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        got = [r for r in rows if r["method"] == method]
        lines.append(
            f"| {LABELS.get(method, method)} | {_cell([r['accuracy'] for r in got])} | "
            f"{_cell([r['accuracy_lenient'] for r in got])} | "
            f"{statistics.mean(r['train_seconds'] for r in got):.0f} |"
        )
    recipe = [r for r in rows if r["method"].startswith("vsft-")]
    if recipe:
        lines += [
            "",
            "| recipe run | seed | π_θ0 acc % | q acc with hint % (its trace reaches y %) | q trace tokens | "
            "ESS of K | questions with a trace (chosen trace reaches y %) | stage seconds (prior, posterior, "
            "traces, weights, final) | sampling s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in recipe:
            stages = list(r["stages"].values())
            q_len = r.get("q_trace_len", r["trace_len"])  # older lines held q's trace length in trace_len
            sampling = r["stages"].get("traces", 0) + (r["weights"].get("sampling_seconds") or 0)
            lines.append(
                f"| {LABELS[r['method']]} | {r['seed']} | {100 * r['prior_accuracy']:.1f} | "
                f"{100 * r['q_accuracy_with_hint']:.1f} ({_percent(r.get('q_trace_reaches_answer'))}) | "
                f"{q_len:.1f} | {r['data']['ess']:.2f} | {r['data']['with_trace']}/"
                f"{r['data']['questions']} ({_percent(r['data'].get('chosen_reaches_answer'))}) | "
                f"{', '.join(f'{v:.0f}' for v in stages[:4] + stages[-1:])} | {sampling:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset of "
        + ",".join(METHODS + WARM + CHECKED)
        + " (@sft: π starts from the SFT run; -checked: reward 0 for a wrong equation, the recipe's "
        "check_working)",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--task", default="word_chain", help="chain | word_chain")
    parser.add_argument("--n-train", type=int, default=200, help="training questions")
    parser.add_argument("--gold-count", type=int, default=-1, help="-1: full gold; N: semi-supervised")
    parser.add_argument(
        "--steps", type=int, default=16, help="π updates per method (and per recipe SFT stage)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="questions per update")
    parser.add_argument("--k", type=int, default=4, help="traces per question")
    parser.add_argument("--m", type=int, default=4, help="recipe: π_θ0 continuations per trace (Acc)")
    parser.add_argument("--ratio", default="normalized", help="recipe: normalized | exact")
    parser.add_argument(
        "--warmup", type=int, default=6, help="q warm-up updates of the online variational runs"
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature (the recipe: of q_φ's traces)"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--warm-lr",
        type=float,
        default=None,
        help="learning rate of the @sft methods (default: --lr); AdamW's first steps at the SFT rate can "
        "undo the SFT adapter",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eval-size", type=int, default=200, help="held-out questions")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: where the CPU runs bf16 natively, dln.lm.hardware)",
    )
    parser.add_argument(
        "--sft-from-recipe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="report SFT from the recipe's prior stage (the same config, seed and data: trained once)",
    )
    parser.add_argument(
        "--report", action="store_true", help="print the table of the finished runs in --out; train nothing"
    )
    parser.add_argument("--configs", default="configs/reason")
    parser.add_argument("--out", default="runs/reason-bench")
    args = parser.parse_args()
    if args.bf16 is None:
        args.bf16 = native_bf16()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = {}
    if results_file.exists():
        done = {
            (r["method"], r["seed"]): r for r in map(json.loads, results_file.read_text().splitlines()) if r
        }
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.report:  # compare on the same seeds only: those every method has finished
        seeds = [s for s in seeds if all((m, s) in done for m in methods)]
        args.seeds = ",".join(map(str, seeds)) or "none finished by every method"
    for seed in seeds:
        for method in methods:
            if method not in METHODS + WARM + CHECKED:
                parser.error(f"unknown method {method!r}; choose from {', '.join(METHODS + WARM + CHECKED)}")
            if args.report and (method, seed) not in done:
                continue
            if (method, seed) not in done:
                done[method, seed] = run_method(method, seed, args, out / f"seed-{seed}")
                with results_file.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(done[method, seed]) + "\n")
                print(json.dumps(done[method, seed]), flush=True)
            rows.append(done[method, seed])
    print(table(rows, args))


if __name__ == "__main__":
    main()
