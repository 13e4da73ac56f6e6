"""The typed config of a prompt-training run (`dln train`), with budget presets.

Paper defaults (DLN-1): 20 iterations, a class-balanced minibatch of 20, N=20 candidate prompts, forward
temperature 0, backward temperature 0.7. `preset: light` is the CPU-sized budget `make demo` uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from dln.errors import DLNError
from dln.layers import CLASSIFY_TEMPLATE, HIDDEN_TEMPLATE

METHODS = ("dln1", "dln2", "zero_shot", "icl")
DTYPES = ("bfloat16", "float16", "float32")

PRESETS: dict[str, dict] = {
    "light": {
        "iterations": 4,
        "batch_size": 12,
        "num_candidates": 6,
        "dev_size": 40,
        "eval_every": 2,
        "num_hidden_samples": 2,
    },
    "medium": {
        "iterations": 10,
        "batch_size": 16,
        "num_candidates": 10,
        "dev_size": 100,
        "eval_every": 2,
        "num_hidden_samples": 3,
    },
    "heavy": {
        "iterations": 20,
        "batch_size": 20,
        "num_candidates": 20,
        "dev_size": 0,
        "eval_every": 2,
        "num_hidden_samples": 5,
    },
}


def _help(text: str, default=None, **kwargs):
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    # what to train on
    task: str | None = _help(
        "a shipped task (navigate, date_understanding, logical_deduction, hyperbaton, sentiment, topic)"
    )
    train: str | None = _help("training file (JSONL/CSV with input, target and optional labels)")
    dev: str | None = _help("dev file: picks the best prompt during training")
    test: str | None = _help("test file, used by `dln eval --split test`")
    method: str = _help("dln1, dln2, zero_shot (the initial prompt) or icl (k-shot in-context)", "dln1")
    model: str = _help("forward model URI", "hf:default")
    backward_model: str | None = _help("model that proposes prompts (default: the forward model)")
    decode_dtype: str | None = _help(
        "hf: models only: dtype of the weight copy that decodes `generate` (prompt proposals, outputs), e.g. "
        "bfloat16 on a GPU or a CPU with avx512_bf16 or AMX; log-probs (scoring, DLN-2's h) keep the model's"
    )
    dtype: str | None = _help(
        "hf: models only: dtype of the model's own weights, so of every score, DLN-2's samples and decoding "
        "(e.g. bfloat16: scoring ~2x faster on a CPU with avx512_bf16 or AMX); a bf16 model is another model "
        "than the fp32 one, so compare methods at the same dtype"
    )
    preset: str | None = _help("budget preset: light, medium or heavy (explicit keys win)")
    seed: int = _help("seed of minibatches and proposals (paper: 13, 42, 25)", 42)
    # DLN-1
    initial_prompt: str = _help("the prompt training starts from", "Classify the input.")
    init_from: str | None = _help(
        "a finished run (or its program.json) whose trained output prompt replaces initial_prompt, and whose "
        "hidden prompt replaces hidden_prompt when it has one: DLN-2 fine-tuned from DLN-1, the paper's "
        "`--init_p2` (count the source run's iterations in the budget)"
    )
    template: str = _help(
        "Jinja template of the output layer (fields: prompt, input, hidden)", CLASSIFY_TEMPLATE
    )
    iterations: int = _help("training iterations (0: keep the initial prompt)", 20)
    batch_size: int = _help("class-balanced minibatch per iteration", 20)
    num_candidates: int = _help("N: candidate prompts per iteration, the current one included", 20)
    backward_temperature: float = _help("sampling temperature of the prompt proposals", 0.7)
    backward_max_tokens: int = _help("length cap of a proposed prompt, in tokens", 160)
    eval_every: int = _help("evaluate on dev every this many iterations (and at the end)", 2)
    dev_size: int = _help("dev examples used during training (0: all)", 0)
    # DLN-2
    hidden_prompt: str = _help(
        "DLN-2: initial prompt of the hidden layer", "Explain step by step what the input says."
    )
    hidden_template: str = _help("DLN-2: Jinja template of the hidden layer", HIDDEN_TEMPLATE)
    num_hidden_samples: int = _help("DLN-2: K samples h ~ q(h | x, y) per example", 3)
    hidden_max_tokens: int = _help("DLN-2: length cap of a hidden text", 48)
    hidden_temperature: float = _help("DLN-2: sampling temperature of q(h | x, y)", 0.7)
    posterior_temperature: float = _help("DLN-2: temperature of the posterior weights softmax", 1.0)
    held_out_ranking: bool = _help(
        "DLN-1 (and DLN-2 forward): write proposals from one half of the minibatch, rank candidates on the "
        "other (paper: true)",
        False,
    )
    memory: int = _help(
        "DLN-1 (and DLN-2 forward): best earlier output prompts on dev kept as candidates (paper: 2)", 0
    )
    select_by: str = _help(
        "DLN-1 (and DLN-2 forward): rank candidates by loglik (mean log p(gold | x)) or accuracy "
        "(log-likelihood breaks ties)",
        "loglik",
    )
    output_ranking: str = _help(
        "DLN-2: how output-prompt candidates are ranked: posterior (the posterior-weighted log p(y|x,h) of "
        "q's samples, the paper's step) | forward (DLN-1's search, held_out_ranking / memory / select_by "
        "included, on the program's own greedy hidden text: what it answers with at test time)",
        "posterior",
    )
    hidden_ranking: str = _help(
        "DLN-2: how hidden-prompt candidates are ranked: posterior (the posterior-weighted log p(h|x) of q's "
        "samples, the paper's step) | forward (the program's accuracy, select_by / held_out_ranking, with "
        "each candidate's own greedy hidden text and the current output prompt, as at test time)",
        "posterior",
    )
    hidden_weights: str = _help(
        "DLN-2 log-weights: exact (log p(y|x,h) + log p(h|x) - log q(h|x,y); ELBO and bound are bounds) | "
        "per_token (the reference code's: the h terms divided by h's length; a heuristic, not a bound)",
        "exact",
    )
    logp_penalty: float = _help(
        "DLN-2: trust region, subtract this x |log p(h|x, new) - log p(h|x, old)|", 0.0
    )
    # baselines
    icl_shots: int = _help("icl: examples from the train split put in the prompt", 5)

    def __post_init__(self) -> None:
        for key in ("dtype", "decode_dtype"):
            self._check_dtype(key)
        if self.select_by not in ("loglik", "accuracy"):
            raise DLNError(f"select_by must be loglik or accuracy, got {self.select_by!r}")
        if self.memory < 0:
            raise DLNError(f"memory must be >= 0, got {self.memory}")
        if self.output_ranking not in ("posterior", "forward"):
            raise DLNError(f"output_ranking must be posterior or forward, got {self.output_ranking!r}")
        if self.hidden_ranking not in ("posterior", "forward"):
            raise DLNError(f"hidden_ranking must be posterior or forward, got {self.hidden_ranking!r}")
        if self.hidden_weights not in ("exact", "per_token"):
            raise DLNError(f"hidden_weights must be exact or per_token, got {self.hidden_weights!r}")
        if self.method not in METHODS:
            raise DLNError(f"method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.preset is not None and self.preset not in PRESETS:
            raise DLNError(f"preset {self.preset!r} is unknown; use one of {', '.join(PRESETS)}")
        for name in ("batch_size", "num_candidates", "num_hidden_samples", "eval_every"):
            if getattr(self, name) < 1:
                raise DLNError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("iterations", "icl_shots", "dev_size"):
            if getattr(self, name) < 0:
                raise DLNError(f"{name} must be >= 0, got {getattr(self, name)}")

    def _check_dtype(self, key: str) -> None:
        value = getattr(self, key)
        if value is None:
            return
        if value not in DTYPES:
            raise DLNError(f"{key} must be one of {', '.join(DTYPES)}, got {value!r}")
        for uri in filter(None, (self.model, self.backward_model)):
            if not uri.startswith("hf:"):
                raise DLNError(f"{key} applies to hf: models only, not {uri!r}; leave it out")

    def model_options(self) -> dict:
        """Backend options of `load_model` for this run's models."""
        keys = ("dtype", "decode_dtype")
        return {key: getattr(self, key) for key in keys if getattr(self, key)}


def apply_preset(file_values: dict, cli_values: dict) -> dict:
    """Config file < preset < command line: a preset resizes a config file's budget, explicit flags win."""
    preset = cli_values.get("preset", file_values.get("preset"))
    if preset is not None and preset not in PRESETS:
        raise DLNError(f"preset {preset!r} is unknown; use one of {', '.join(PRESETS)}")
    return {**file_values, **PRESETS.get(preset, {}), **cli_values}


def help_of(name: str) -> str:
    return next(f.metadata.get("help", "") for f in fields(TrainConfig) if f.name == name)
