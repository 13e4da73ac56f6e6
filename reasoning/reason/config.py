"""`dln reason train`'s one config: objective, task, model/adapters, budget. YAML under configs/reason/.

Unknown keys are errors naming the key (`dln.config.build_config`); every field's help is printed by
`dln reason train --help`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dln.errors import DLNError
from reasoning.finetune.config import LoopConfig, PolicyConfig, _help

OBJECTIVES = ("sft", "rft", "grpo", "grpo_trl", "star", "elbo", "iwae", "forward_kl", "variational_sft")
VARIATIONAL = ("elbo", "iwae", "forward_kl")
RHO_ESTIMATORS = ("gml", "acc", "likelihood")
# keys of the offline recipe's last stage only: runs on one directory that differ in them share the others
FINAL_STAGE_KEYS = (
    "rho_estimator", "rho_ratio", "final_data", "check_working", "final_init", "final_lr",
)  # fmt: skip
# the posterior's update of each variational objective when posterior_loss is `auto`
AUTO_POSTERIOR = {"elbo": "reverse_kl", "iwae": "reverse_kl", "forward_kl": "forward_kl"}


@dataclass
class ReasonConfig(LoopConfig, PolicyConfig):
    """Fine-tune π_θ(z, y | x) with thinking traces z as latent variables, or a baseline, on one budget.

    The model/LoRA keys (`PolicyConfig`) and the loop keys (`LoopConfig`) are shared with every fine-tuning
    run (`seed` among them, declared once in `SeedConfig`); `steps` and `lr` get this objective's defaults.
    """

    # keys that may change between a run and its resumption (`dln.rundir.RunDir.start`)
    RESUME_IGNORED: ClassVar[tuple[str, ...]] = ("progress", "eval_size")

    objective: str = _help(
        "sft (gold traces) | rft | grpo | grpo_trl (TRL GRPOTrainer) | star (samples from π) | "
        "elbo | iwae | forward_kl (traces from q) | variational_sft (the paper's offline recipe)",
        "sft",
    )
    # data
    task: str = _help(
        "shipped task when no train/test files are given: chain (3 steps) | word_chain (word problems)",
        "chain",
    )
    train: str | None = _help("training JSONL, GSM8K format (question, answer with `#### N`)", None)
    test: str | None = _help("held-out JSONL, GSM8K format", None)
    task_seed: int = _help("seed of the shipped task's questions and train/test split", 0)
    n_train: int = _help("shipped task: training questions (word_chain: the first N of its 2000)", 2000)
    n_test: int = _help("shipped task: held-out questions (word_chain: the first N of its 300)", 200)
    gold_count: int = _help(
        "training questions that keep their gold trace (the first N); the rest keep only their answer "
        "(semi-supervised: SFT and q's warm-up see the N, the other objectives every answer); -1: all",
        -1,
    )
    init_policy: str = _help(
        "start π from this saved adapter directory (e.g. an SFT run's policy/, same base model and LoRA "
        "shape) instead of the base model: RFT, GRPO or STaR after SFT; empty: the base model",
        "",
    )
    # budget
    steps: int = _help("optimizer updates of the objective (after the posterior warm-up)", 20)
    batch_size: int = _help("questions per micro-step (per process)", 8)
    lr: float = _help("AdamW learning rate", 3e-4)
    # sampling
    k: int = _help("traces per question (K); the ELBO uses K = 1", 4)
    max_new_tokens: int = _help("longest sampled trace + answer, in tokens", 48)
    temperature: float = _help("sampling temperature of the traces", 1.0)
    top_p: float = _help("nucleus sampling of the traces", 1.0)
    # objective options
    per_token: bool = _help("length-normalised log-probs (the reference code's choice; not a bound)", False)
    debias: bool = _help("rft/grpo: remove the implicit accuracy weighting of each question", False)
    weight_temperature: float = _help("T of the self-normalised weights softmax(log w / T)", 1.0)
    posterior_loss: str = _help(
        "how q is trained: auto (elbo/iwae: reverse_kl, forward_kl: forward_kl) | reverse_kl | forward_kl | "
        "frozen",
        "auto",
    )
    posterior_warmup_steps: int = _help(
        "variational: SFT updates of q on gold traces with the answer hint", 10
    )
    posterior_warmup_examples: int = _help("variational: gold traces q's warm-up may see", 32)
    # the offline recipe (objective variational_sft, `reasoning.reason.recipe`)
    rho_estimator: str = _help(
        "variational_sft: π_θ0(y | x, z) in ρ by gml (geometric mean of the answer's token probabilities) | "
        "acc (fraction of acc_samples continuations of π_θ0 that are correct) | likelihood (exact)",
        "gml",
    )
    rho_ratio: str = _help(
        "variational_sft: π_θ0(z | x) / q(z | x, y) in ρ as normalized (per-token means, the paper's code) "
        "or exact (sequence sums)",
        "normalized",
    )
    final_data: str = _help(
        "variational_sft: the final π's data: mix (gold + each question's top-ρ trace) | weighted (gold + "
        "each question's traces with self-normalised weights ρ_k / Σ_j ρ_j) | paired (mix grouped by "
        "question: its gold and its top-ρ trace in one row; with full gold π sees every gold row SFT sees)",
        "mix",
    )
    final_init: str = _help(
        "variational_sft: where the final π starts: base (the base model, the paper's recipe) | prior "
        "(π_θ0, the SFT run of the prior stage: the recipe's traces as training after SFT, like RFT or STaR "
        "after SFT)",
        "base",
    )
    final_lr: float = _help(
        "variational_sft: the final π's learning rate; 0: lr (training after SFT usually runs lower)", 0.0
    )
    acc_samples: int = _help("variational_sft: continuations of π_θ0 per trace for the acc estimator", 4)
    check_working: bool = _help(
        "variational_sft: ρ = 0 for a q-trace with a wrong equation `a op b = c` in its working (q, told the "
        "answer, writes wrong steps that land on it); rft, grpo, grpo_trl, star: reward 0 for such a sample, "
        "the same verifier for the baselines (`reasoning.reason.working`)",
        False,
    )
    # evaluation
    eval_size: int = _help(
        "held-out questions scored (greedy, strict `Answer: N`) after training; 0: none", 100
    )

    def __post_init__(self) -> None:
        LoopConfig.__post_init__(self)
        PolicyConfig.__post_init__(self)
        if self.objective not in OBJECTIVES:
            raise DLNError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.posterior_loss not in ("auto", "reverse_kl", "forward_kl", "frozen"):
            raise DLNError(
                f"posterior_loss must be auto, reverse_kl, forward_kl or frozen, got {self.posterior_loss!r}"
            )
        self._check_recipe()
        for name in (
            "steps",
            "posterior_warmup_steps",
            "posterior_warmup_examples",
            "eval_size",
            "acc_samples",
        ):
            if getattr(self, name) < 0:
                raise DLNError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "k", "max_new_tokens", "grad_accum", "save_every"):
            if getattr(self, name) < 1:
                raise DLNError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.weight_temperature <= 0:
            raise DLNError("temperature and weight_temperature must be > 0, top_p in (0, 1]")
        if self.objective in ("grpo", "grpo_trl") and self.k < 2:
            raise DLNError("grpo compares K >= 2 samples per question; set k: 2 or more")

    def _check_recipe(self) -> None:
        choices = {
            "rho_estimator": RHO_ESTIMATORS,
            "rho_ratio": ("normalized", "exact"),
            "final_data": ("mix", "weighted", "paired"),
            "final_init": ("base", "prior"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DLNError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.final_lr < 0:
            raise DLNError(f"final_lr must be >= 0 (0: the run's lr), got {self.final_lr}")
        if self.gold_count < -1:
            raise DLNError(f"gold_count must be -1 (every gold trace) or >= 0, got {self.gold_count}")
        if self.objective == "variational_sft" and self.rho_estimator == "acc" and self.acc_samples < 1:
            raise DLNError("rho_estimator acc needs acc_samples >= 1 continuations of π_θ0 per trace")

    @property
    def variational(self) -> bool:
        return self.objective in VARIATIONAL

    @property
    def posterior_update(self) -> str:
        return (
            AUTO_POSTERIOR.get(self.objective, "frozen")
            if self.posterior_loss == "auto"
            else self.posterior_loss
        )

    @property
    def warmup(self) -> int:
        """Updates spent warming q up before the objective's own updates (0 for the baselines)."""
        return self.posterior_warmup_steps if self.variational else 0
