"""The Hugging Face Trainer, adapted: streaming evaluation, the SegFormer optimiser and loss,
augmentation that survives resuming, and Ctrl-C that saves a checkpoint."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback

from ..data.labels import LabelSet
from ..data.pairs import PairDataset
from ..evaluation.metrics import metrics_to_json
from ..evaluation.scoring import evaluate_model
from ..models.architectures import family
from ..models.masks import mask_loss
from .card import model_card

log = logging.getLogger("segtune")
SCALAR_METRICS = ("mean_iou", "mean_accuracy", "overall_accuracy")


class TrainDataset(PairDataset, Dataset):
    """Item k is pair k % n, augmented by a generator seeded from (seed, epoch = k // n, pair).

    The epoch travels inside the index (see EpochSampler), so the augmentation of every image
    is fixed by the seed alone: the same with any number of workers, and after a resume. The
    generator is the item's own `random.Random`, handed to the transform: nothing else that
    draws from the process-global `random` (in this process or a worker) can shift it, and
    loading an item leaves the global state alone.
    """

    seed = 0

    def __getitem__(self, k):
        epoch, i = divmod(k, len(self.samples))
        # Random(n) starts where random.seed(n) put the global generator, so runs are unchanged.
        rng = random.Random(int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0]))
        pixel_values, labels = self.transform(*self.load(i), rng)
        return {"pixel_values": pixel_values, "labels": labels}


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle drawn from (seed, epoch), yielding epoch * n + i so the dataset knows the epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return iter((order + self.epoch * self.n).tolist())


class JsonlLogger(TrainerCallback):
    """Appends every log record (loss, learning rate, evaluations) to log.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class InterruptCheckpoint(TrainerCallback):
    """Ctrl-C finishes the current step, saves a checkpoint and stops; a second Ctrl-C leaves at once."""

    def __init__(self):
        self.interrupted, self.pid, self.previous = False, os.getpid(), None

    def install(self) -> None:
        self.previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame):
        if os.getpid() != self.pid:  # a forked DataLoader worker: keep working, the main process decides
            return
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        log.warning("segtune: interrupted: saving a checkpoint after this step (Ctrl-C again to leave now)")

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = control.should_training_stop = True


class _EpochSetter(TrainerCallback):
    # The Trainer tells the sampler its epoch, except in a resumed epoch whose first batches it
    # skips through a wrapper; state.epoch holds the right epoch either way.
    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.epoch_sampler is not None:
            self.trainer.epoch_sampler.set_epoch(int(state.epoch or 0))


def loss_with_auxiliary(model, pixel_values, labels, loss):
    """-> (loss, outputs): `loss` (segtune's, segtune/training/losses.py) of the model's logits, plus, for a model
    with an auxiliary head (UperNet, BEiT, Data2Vec-Vision, DPT), `config.auxiliary_loss_weight` times
    the same loss of that head's logits, as the model's own loss adds its cross-entropy. The models run
    their auxiliary head in every forward pass but return only the main logits: a forward hook keeps
    the head's output."""
    inner = getattr(model, "module", model)  # DistributedDataParallel's wrapper
    head, kept = getattr(inner, "auxiliary_head", None), []
    hook = head.register_forward_hook(lambda module, args, output: kept.append(output)) if head is not None else None
    try:
        outputs = model(pixel_values=pixel_values)
    finally:
        if hook is not None:
            hook.remove()
    value = loss(outputs.logits, labels)
    if kept and torch.is_tensor(kept[0]):
        value = value + getattr(inner.config, "auxiliary_loss_weight", 0.4) * loss(kept[0], labels)
    return value, outputs


class MaskAnnealing(TrainerCallback):
    """EoMT's mask annealing: before each step, each query block's attention-mask probability from its
    schedule (optim.eomt_mask_probability), so masked attention is gone by the end of training and the
    saved model runs without it. Stateless: a resumed run sets the probabilities from its step."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        from .optim import eomt_mask_probability

        probs = getattr(getattr(model, "module", model), "attn_mask_probs", None)
        if probs is None:
            return
        blocks = len(probs)
        values = [eomt_mask_probability(state.global_step, state.max_steps, i, blocks) for i in range(blocks)]
        with torch.no_grad():
            probs.copy_(torch.tensor(values, dtype=probs.dtype))


class SegmentationTrainer(Trainer):
    """Evaluation by streaming confusion matrix instead of stacking every logit.

    `param_groups`: a function of the model giving the optimiser's parameter groups (the
    SegFormer recipe: no weight decay on norms, a faster head); `poly_warmup`: warm-up steps
    of the recipe's poly schedule (a function of the total steps), None for the Trainer's own
    schedule; `loss`: a function of (logits, labels) replacing the model's cross-entropy.
    """

    def __init__(self, *args, labels: LabelSet, ignore_index: int, card: dict, param_groups=None, poly_warmup=None,
                 poly_power: float = 1.0, loss=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels, self.ignore_index, self.card = labels, ignore_index, card
        self.param_groups, self.poly_warmup, self.poly_power, self.loss = param_groups, poly_warmup, poly_power, loss
        # a mask classifier learns from targets built from the labels (models/masks.py), by its own loss
        self.mask_classifier = family(self.model.config) == "mask"
        if hasattr(self.model, "attn_mask_probs"):
            self.add_callback(MaskAnnealing())
        self.last_metrics: dict | None = None
        self.warmup_steps_used: int | None = None  # for the model card, whichever schedule it was
        self.epoch_sampler: EpochSampler | None = None
        self.add_callback(_EpochSetter(self))

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, TrainDataset):
            dataset.seed = self.args.seed
            self.epoch_sampler = EpochSampler(len(dataset), self.args.seed)
            return self.epoch_sampler
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.param_groups is not None:
            args = self.args
            self.optimizer = torch.optim.AdamW(
                self.param_groups(self.model), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                eps=args.adam_epsilon, fused=next(self.model.parameters()).device.type in ("cuda", "cpu"),
            )  # each group its own lr and weight decay; fused (one kernel) as the Trainer's default AdamW
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.poly_warmup is not None:
            from .optim import poly_schedule

            warmup = min(self.poly_warmup(num_training_steps), num_training_steps - 1)
            self.lr_scheduler = poly_schedule(optimizer or self.optimizer, warmup, num_training_steps, self.poly_power)
            self.warmup_steps_used = warmup
        elif self.lr_scheduler is None:  # the Trainer's own schedule, as it computes its warm-up
            self.warmup_steps_used = self.args.get_warmup_steps(num_training_steps)
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.mask_classifier:
            loss, outputs = mask_loss(model, inputs["pixel_values"], inputs["labels"], self.ignore_index)
            return (loss, outputs) if return_outputs else loss
        if self.loss is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = loss_with_auxiliary(model, inputs["pixel_values"], inputs["labels"], self.loss)
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        cm = evaluate_model(
            self.model,
            eval_dataset or self.eval_dataset,
            len(self.labels),
            self.ignore_index,
            batch_size=self.args.per_device_eval_batch_size,
            num_workers=self.args.dataloader_num_workers,
            progress=not self.args.disable_tqdm,
        )
        self.last_metrics = cm.compute()
        scalars = {f"{metric_key_prefix}_{k}": self.last_metrics[k] for k in SCALAR_METRICS}
        self.log(scalars)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, scalars)
        return scalars

    # transformers 5 saves SegFormer weights under their original names, but the Trainer reloads
    # checkpoints (resume, best model) with a raw non-strict load_state_dict that then silently
    # loads nothing. from_pretrained knows the renaming, so reload through it.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        loaded = type(model).from_pretrained(resume_from_checkpoint)
        model.load_state_dict(loaded.state_dict())

    def _load_best_model(self):
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def create_model_card(self, **kwargs):
        # Also used by push_to_hub, so the Hub gets segtune's card rather than the generic one.
        if self.is_world_process_zero() and self.last_metrics is not None:
            metrics = metrics_to_json(self.last_metrics, self.labels.names)
            card = dict(self.card)
            card["hyperparameters"] = {**card.get("hyperparameters", {}), "total_steps": self.state.max_steps,
                                       "steps_trained": self.state.global_step}
            if self.warmup_steps_used is not None:
                card["hyperparameters"]["warmup_steps"] = self.warmup_steps_used
            text = model_card(metrics=metrics, class_names=self.labels.names, **card)
            Path(self.args.output_dir, "README.md").write_text(text)
