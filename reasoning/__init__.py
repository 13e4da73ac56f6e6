"""Fine-tuning over latent text and weights (DESIGN.md section 4): TFB in `reasoning.tfb`."""
