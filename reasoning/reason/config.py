"""`dln reason train`'s one config: objective, task, model/adapters, budget. YAML under configs/reason/.

Unknown keys are errors naming the key (`dln.config.build_config`); every field's help is printed by
`dln reason train --help`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dln.errors import DLNError
from reasoning.finetune.config import LoopConfig, PolicyConfig, _help

OBJECTIVES = ("sft", "rft", "grpo", "grpo_trl", "elbo", "iwae", "forward_kl")
VARIATIONAL = ("elbo", "iwae", "forward_kl")
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
        "sft (gold traces) | rft | grpo | grpo_trl (TRL GRPOTrainer) (samples from π) | "
        "elbo | iwae | forward_kl (traces from q)",
        "sft",
    )
    # data
    task: str = _help("shipped task (`chain`) when no train/test files are given", "chain")
    train: str | None = _help("training JSONL, GSM8K format (question, answer with `#### N`)", None)
    test: str | None = _help("held-out JSONL, GSM8K format", None)
    task_seed: int = _help("seed of the shipped task's questions and train/test split", 0)
    n_train: int = _help("shipped task: training questions", 2000)
    n_test: int = _help("shipped task: held-out questions", 200)
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
        for name in ("steps", "posterior_warmup_steps", "posterior_warmup_examples", "eval_size"):
            if getattr(self, name) < 0:
                raise DLNError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "k", "max_new_tokens", "grad_accum", "save_every"):
            if getattr(self, name) < 1:
                raise DLNError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.weight_temperature <= 0:
            raise DLNError("temperature and weight_temperature must be > 0, top_p in (0, 1]")
        if self.objective in ("grpo", "grpo_trl") and self.k < 2:
            raise DLNError("grpo compares K >= 2 samples per question; set k: 2 or more")

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
