"""Best-of-N and variational Best-of-N (`dln bon`): see docs/bon.md.

- `density`: the BoN maths (density, vBoN log-ratio, smoothed reward CDF, BoN weights over M samples);
- `best_of_n`: BoN sampling over any `LanguageModel`;
- `rewards`: reward functions and their specs;
- `config`, `trainer`: vBoN / KL-RL fine-tuning of a LoRA policy; `evaluate`: the reward-KL points;
- `cli`: the `dln bon` command; `data/`: the shipped review prompts and their generator.
"""
