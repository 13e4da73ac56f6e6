"""The config of a vBoN (or KL-RL baseline) run; torch-free, see `reasoning.bon.trainer` for the math."""

from __future__ import annotations

from dataclasses import dataclass

from dln.errors import DLNError
from reasoning.finetune.config import LoopConfig, PolicyConfig, _help


@dataclass
class VBoNConfig(LoopConfig, PolicyConfig):
    """One vBoN or KL-RL run: the policy, the budget (LoopConfig) and the objective."""

    objective: str = _help("vbon (reward log F, β = 1/(N-1)) or kl_rl (raw reward, β = kl_coef)", "vbon")
    bon_n: int = _help("N of the Best-of-N distribution vBoN fits", 4)
    exact: bool = _help("vbon: use the exact BoN log-ratio instead of its first-order form log F", False)
    kl_coef: float = _help("kl_rl: KL coefficient β", 0.05)
    reward: str = _help("reward spec: vader, length, hf-classifier:<dir>, module:function", "vader")
    prompts: str = _help("`reviews` (shipped movie-review openings) or a JSONL of `prompt`s", "reviews")
    train_prompts: int = _help("use the first N training prompts (0: all)", 48)
    prompts_per_step: int = _help("prompts per micro-step", 8)
    samples_per_prompt: int = _help("k samples per prompt (RLOO needs k >= 2)", 4)
    max_new_tokens: int = _help("completion length in tokens", 40)
    temperature: float = _help("sampling temperature of policy and reference", 1.0)
    reference_samples: int = _help("M reference samples per prompt for the reward CDF F̂", 16)

    def __post_init__(self) -> None:
        LoopConfig.__post_init__(self)
        PolicyConfig.__post_init__(self)
        if self.objective not in ("vbon", "kl_rl"):
            raise DLNError(f"objective must be vbon or kl_rl, got {self.objective!r}")
        if self.bon_n < 2:
            raise DLNError(f"bon_n must be >= 2 (N = 1 is the reference itself), got {self.bon_n}")
        if self.samples_per_prompt < 2:
            raise DLNError("samples_per_prompt must be >= 2: the leave-one-out baseline needs two samples")
        if self.reference_samples < 1 or self.prompts_per_step < 1:
            raise DLNError("reference_samples and prompts_per_step must be >= 1")

    @property
    def beta(self) -> float:
        return 1.0 / (self.bon_n - 1) if self.objective == "vbon" else self.kl_coef
