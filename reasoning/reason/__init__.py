"""Variational reasoning: thinking traces as latent variables (see docs/reason.md); `dln reason`."""
