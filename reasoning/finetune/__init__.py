"""The core every fine-tuning algorithm shares: its config keys (`config`), the LoRA policy on one base model
(`policy`), adapter IO (`adapters`) and the resumable Accelerate loop on `dln.rundir` (`loop`)."""
