"""Model architectures of our own that serving must be able to load.

``BagOfEmbeddingsForSequenceClassification`` is the cheapest student: the teacher's token embeddings,
averaged over the text's tokens, then a small MLP. No attention, no layers: its cost per text is a
lookup and two matrix-vector products, so the cascade can lean on it when the cost ratio matters more
than the last point of accuracy. It is a regular transformers model (registered with the Auto classes
under ``model_type = "cascade_bag_of_embeddings"``), so it saves, loads, exports to ONNX and serves
through the same code paths as a BERT.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class BagOfEmbeddingsConfig(PretrainedConfig):
    model_type = "cascade_bag_of_embeddings"

    def __init__(
        self,
        vocab_size: int = 30522,
        embedding_size: int = 384,
        hidden_size: int = 256,
        dropout: float = 0.1,
        pad_token_id: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pad_token_id = pad_token_id
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.dropout = dropout


class BagOfEmbeddingsForSequenceClassification(PreTrainedModel):
    config_class = BagOfEmbeddingsConfig
    base_model_prefix = "bag"

    def __init__(self, config: BagOfEmbeddingsConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.classifier = nn.Sequential(
            nn.LayerNorm(config.embedding_size),
            nn.Dropout(config.dropout),
            nn.Linear(config.embedding_size, config.hidden_size),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_size, config.num_labels or 2),
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> SequenceClassifierOutput:
        mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).unsqueeze(-1)
        mask = mask.to(self.embeddings.weight.dtype)
        summed = (self.embeddings(input_ids) * mask).sum(dim=1)
        pooled = summed / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(pooled)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def bag_of_embeddings_from_teacher(
    teacher: PreTrainedModel, hidden_size: int = 256
) -> BagOfEmbeddingsForSequenceClassification:
    """A bag-of-embeddings student that starts from the teacher's word embeddings and label names."""
    word_embeddings: Any = teacher.get_input_embeddings().weight
    teacher_config: Any = teacher.config
    config = BagOfEmbeddingsConfig(
        vocab_size=int(word_embeddings.shape[0]),
        embedding_size=int(word_embeddings.shape[1]),
        hidden_size=hidden_size,
        pad_token_id=teacher_config.pad_token_id or 0,
        id2label=dict(teacher_config.id2label),
        label2id=dict(teacher_config.label2id),
    )
    student = BagOfEmbeddingsForSequenceClassification(config)
    with torch.no_grad():
        student.embeddings.weight.copy_(word_embeddings)
    return student


def register_architectures() -> None:
    """Make ``AutoModelForSequenceClassification.from_pretrained`` know our architectures (idempotent)."""
    try:
        AutoConfig.register(BagOfEmbeddingsConfig.model_type, BagOfEmbeddingsConfig)
    except ValueError:  # already registered
        return
    AutoModelForSequenceClassification.register(BagOfEmbeddingsConfig, BagOfEmbeddingsForSequenceClassification)
