"""Training: fine-tuning on the Hugging Face Trainer.

- `arguments.py`: `TrainOptions` and segtune's `TrainingArguments` defaults.
- `run.py`: `segtune train` (`run_training`): data, model, recipe, Trainer, saved folder, report.
- `trainer.py`: the adapted Trainer (epoch sampler, Ctrl-C, checkpoint reloads, streamed evaluation).
- `optim.py`: the SegFormer optimiser recipe; `losses.py`: dice, focal, weighted losses;
  `precision.py`: the default precision; `card.py`: the model card.
"""
