"""The training pieces shared by fine-tuning and distillation.

- ``distillation_loss``: Hinton et al. (2015) soft targets at temperature ``T`` (scaled by ``T²`` so
  their gradients keep the size of the hard loss) mixed with the hard-label cross-entropy by ``alpha``;
  without labels it is the soft loss alone.
- ``student_from_teacher_layers``: a DistilBERT-style student that starts from a subset of the
  teacher's own layers (plus its embeddings, pooler and classifier).
- ``train``: one loop for both, with a seeded order, a progress bar showing loss and dev accuracy,
  and early stopping that keeps the best dev epoch.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


NO_LABEL = -100
"""The label id of a row without a gold label (a transfer text): only the teacher's soft target trains on it."""


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha * T² * KL(teacher_T ‖ student_T) + (1 - alpha) * CE(student, labels)``.

    With ``labels=None`` the soft term alone; with ``teacher_logits=None`` the hard term alone. Rows
    labelled ``NO_LABEL`` add to the soft term only; the hard term averages over the labelled rows.
    """
    if labels is not None and bool((labels == NO_LABEL).all()):
        labels = None
    if teacher_logits is None and labels is None:
        raise ValueError("distillation_loss needs teacher logits, labels, or both")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    hard = F.cross_entropy(student_logits, labels, ignore_index=NO_LABEL) if labels is not None else None
    if teacher_logits is None:
        assert hard is not None
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    if hard is None:
        return soft
    return alpha * soft + (1.0 - alpha) * hard


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no encoder.layer list to take layers from")
    return layers


def student_from_teacher_layers(teacher: PreTrainedModel, layers: Sequence[int], width: float = 1.0) -> PreTrainedModel:
    """A copy of ``teacher`` that keeps only the encoder ``layers`` (in order), DistilBERT-style.

    ``width < 1`` also makes it narrower: hidden size, attention heads (head size kept) and feed-forward
    size shrink by that factor, and every weight starts as the leading slice of the teacher's
    ("weight selection", Xu et al., ICLR 2024), so the narrow student still starts from pretrained
    weights rather than from noise.
    """
    available = len(_encoder_layers(teacher))
    if not layers or any(not 0 <= i < available for i in layers):
        raise ValueError(f"layers must be a non-empty list of indices in [0, {available - 1}], got {list(layers)}")
    config: Any = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    if not 0 < width <= 1:
        raise ValueError(f"width must be in (0, 1], got {width}")
    if width < 1:
        heads = max(1, round(config.num_attention_heads * width))
        head_size = config.hidden_size // config.num_attention_heads
        config.num_attention_heads = heads
        config.hidden_size = heads * head_size
        config.intermediate_size = max(1, round(config.intermediate_size * width))
    student = type(teacher)(config)
    pattern = re.compile(r"(.*\.encoder\.layer\.)(\d+)(\..*)")
    source = teacher.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, target in student.state_dict().items():
        match = pattern.match(key)
        key_in_teacher = f"{match[1]}{layers[int(match[2])]}{match[3]}" if match else key
        weight = source[key_in_teacher]
        mapped[key] = weight[tuple(slice(0, n) for n in target.shape)].clone()
    student.load_state_dict(mapped)
    return student


@dataclass
class TrainingData:
    """Texts with hard labels, soft targets (teacher logits), or both, already tokenised."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


@torch.inference_mode()
def predict_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """Logits in the rows' order; rows are batched by length so that each batch trims its padding."""
    model.eval()
    order = torch.argsort(attention_mask.sum(dim=1), stable=True)
    parts = []
    for start in range(0, input_ids.shape[0], batch_size):
        rows = order[start : start + batch_size]
        mask = attention_mask[rows]
        width = int(mask.sum(dim=1).max())  # trim shared padding: much cheaper on short texts
        parts.append(model(input_ids=input_ids[rows][:, :width], attention_mask=mask[:, :width]).logits.float())
    logits = torch.cat(parts)
    restored = torch.empty_like(logits)
    restored[order] = logits
    return restored


@dataclass
class TrainSettings:
    epochs: int = 3
    learning_rate: float = 5e-5
    batch_size: int = 32
    temperature: float = 2.0
    alpha: float = 0.5
    patience: int = 2
    seed: int = 0
    weight_decay: float = 0.01
    warmup_share: float = 0.1


@dataclass
class TrainResult:
    best_epoch: int
    best_dev_accuracy: float | None
    history: list[dict[str, float]] = field(default_factory=list)


def length_bucketed_batches(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator, pool_batches: int = 50
) -> list[torch.Tensor]:
    """Shuffled batches of rows of similar length: each batch is then trimmed to its longest row.

    Rows are shuffled, cut into pools of ``pool_batches`` batches, sorted by length within a pool, and
    the resulting batches shuffled again: random enough for SGD, and on short-text data it roughly
    halves the padded tokens (and the time) of an epoch on a CPU.
    """
    order = torch.randperm(len(lengths), generator=generator)
    pool = batch_size * pool_batches
    batches: list[torch.Tensor] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def train(
    model: nn.Module,
    data: TrainingData,
    settings: TrainSettings,
    *,
    dev: TrainingData | None = None,
    description: str = "train",
) -> TrainResult:
    """Train in place; with ``dev`` (labelled) keep the best epoch's weights and stop early."""
    seed_everything(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, (len(data) + settings.batch_size - 1) // settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup = max(1, int(total_steps * settings.warmup_share))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / (total_steps - warmup + 1))),
    )
    lengths = data.attention_mask.sum(dim=1)
    result = TrainResult(best_epoch=0, best_dev_accuracy=None)
    best_state: dict[str, torch.Tensor] | None = None
    best_key: tuple[float, float] | None = None
    epochs_without_gain = 0
    progress = tqdm(total=total_steps, desc=description, unit="step", dynamic_ncols=True)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        running = 0.0
        for step, rows in enumerate(length_bucketed_batches(lengths, settings.batch_size, generator), start=1):
            mask = data.attention_mask[rows]
            width = int(mask.sum(dim=1).max())
            logits = model(input_ids=data.input_ids[rows][:, :width], attention_mask=mask[:, :width]).logits
            loss = distillation_loss(
                logits,
                data.teacher_logits[rows] if data.teacher_logits is not None else None,
                data.labels[rows] if data.labels is not None else None,
                temperature=settings.temperature,
                alpha=settings.alpha,
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            running += loss.item()
            progress.update(1)
            progress.set_postfix(epoch=epoch, loss=f"{running / step:.4f}", dev_acc=_fmt(result.best_dev_accuracy))
        record = {"epoch": float(epoch), "loss": running / steps_per_epoch}
        if dev is not None and dev.labels is not None:
            dev_logits = predict_logits(model, dev.input_ids, dev.attention_mask)
            dev_accuracy = accuracy(dev_logits, dev.labels)
            dev_nll = float(F.cross_entropy(dev_logits, dev.labels))
            record.update(dev_accuracy=dev_accuracy, dev_nll=dev_nll)
            progress.set_postfix(epoch=epoch, loss=f"{record['loss']:.4f}", dev_acc=_fmt(dev_accuracy))
            # Better = more accurate, or as accurate and better calibrated (a small dev set saturates
            # accuracy early while the model is still far from confident).
            if best_key is None or (dev_accuracy, -dev_nll) > best_key:
                best_key = (dev_accuracy, -dev_nll)
                result.best_dev_accuracy, result.best_epoch = dev_accuracy, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                epochs_without_gain = 0
            else:
                epochs_without_gain += 1
        else:
            result.best_epoch = epoch
        result.history.append(record)
        if dev is not None and epochs_without_gain >= settings.patience:
            break
    progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
