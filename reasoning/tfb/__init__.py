"""Training-free Bayesianization of a LoRA adapter (`dln tfb`): see docs/tfb.md.

- `config`, `map_train`: the MAP LoRA adapter TFB starts from (a resumable run directory);
- `labels`: the `LabelScorer`, log p(label | F(x, π)) normalised over the label set;
- `posterior`: the SVD re-parametrisation, weight sampling and the σ search;
- `bayesian_lora`: the `BayesianLoRA` object (predict, fit σ, save, load);
- `baselines`: MC-dropout and temperature scaling; `metrics`: ACC, ECE, NLL, Brier;
- `program`: a Bayesianized adapter as a servable program; `cli`: the `dln tfb` command.
"""
