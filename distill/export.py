"""Export a Hugging Face classifier folder to ONNX (fp32, optionally int8) and check parity.

Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs ``onnxscript``,
which we do not otherwise depend on, and optimum does not support transformers 5. Parity is
checked on sample texts through the same backends serving uses, so what is checked is what is served.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from router import softmax
from serving.architectures import register_architectures
from serving.artifact import ONNX_INT8_NAME, ONNX_NAME
from serving.backends import ONNX_INPUT_NAMES, OnnxBackend, TorchBackend
from serving.errors import ArtifactError
from serving.model_ref import ModelRef

FP32_PARITY_TOLERANCE = 1e-4
ONNX_OPSET = 17


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits


def export_onnx(
    folder: Path,
    sample_texts: Sequence[str],
    *,
    int8: bool = False,
    max_length: int = 128,
) -> dict[str, Any]:
    """Write ``model.onnx`` (and ``model.int8.onnx``) into ``folder``; return the parity report.

    Raises ArtifactError when the fp32 export differs from torch by more than 1e-4 in probability.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    register_architectures()
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    example = tokenizer(["an example", "a somewhat longer example text"], padding=True, return_tensors="pt")
    dynamic = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        # The tracer warns about Python-level branches in transformers' masking code; the parity
        # check below is what proves the traced graph right for other batch and sequence sizes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LogitsOnly(model),
            (example["input_ids"], example["attention_mask"]),
            str(folder / ONNX_NAME),
            input_names=list(ONNX_INPUT_NAMES),
            output_names=["logits"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
            external_data=False,
        )
    ref = ModelRef(location=str(folder), labels=(), version="export", has_onnx=True)
    texts = list(sample_texts)
    torch_probs = softmax(
        TorchBackend(ref, device="cpu", threads=torch.get_num_threads(), max_length=max_length).logits(texts)
    )
    onnx_probs = softmax(OnnxBackend(ref, device="cpu", threads=1, max_length=max_length).logits(texts))
    fp32_diff = float(np.abs(torch_probs - onnx_probs).max())
    report: dict[str, Any] = {"parity_samples": len(texts), "onnx_fp32_max_abs_prob_diff": fp32_diff}
    if fp32_diff > FP32_PARITY_TOLERANCE:
        raise ArtifactError(
            f"ONNX fp32 export of {folder} differs from torch by {fp32_diff:.2e} in probability "
            f"(tolerance {FP32_PARITY_TOLERANCE:.0e})"
        )
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(folder / ONNX_NAME), str(folder / ONNX_INT8_NAME), weight_type=QuantType.QInt8)
        int8_probs = softmax(
            OnnxBackend(ref, device="cpu", threads=1, max_length=max_length, quantized=True).logits(texts)
        )
        report["onnx_int8_top1_agreement_with_fp32"] = float(
            (int8_probs.argmax(axis=1) == onnx_probs.argmax(axis=1)).mean()
        )
        report["onnx_int8_max_abs_prob_diff"] = float(np.abs(int8_probs - onnx_probs).max())
    return report
