"""Backends that turn texts into logits: transformers/torch, or ONNX Runtime.

Both tokenise the same way (the artifact's own tokenizer, padding to the longest text in the batch,
truncating at ``max_length``) and feed the same two inputs (``input_ids``, ``attention_mask``), so
for an fp32 export they give the same probabilities to within 1e-4 (a test shows it).

Threads are set explicitly per backend: a replica that leaves them to the library grabs every core
of the node, and several replicas on one node then fight for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from serving.artifact import ONNX_INT8_NAME, ONNX_NAME
from serving.errors import ArtifactError, ConfigError
from serving.model_ref import ModelRef

BackendName = Literal["auto", "torch", "onnx"]
DeviceName = Literal["auto", "cpu", "cuda"]
Logits = NDArray[np.float32]

ONNX_INPUT_NAMES = ("input_ids", "attention_mask")


class Backend(Protocol):
    name: str
    device: str

    def logits(self, texts: list[str]) -> Logits: ...


@dataclass(frozen=True)
class _Tokenized:
    input_ids: NDArray[np.int64]
    attention_mask: NDArray[np.int64]


class _Tokenizer:
    def __init__(self, location: str, max_length: int) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(location)
        self._max_length = max_length

    def __call__(self, texts: list[str]) -> _Tokenized:
        encoded = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self._max_length, return_tensors="np"
        )
        return _Tokenized(
            np.asarray(encoded["input_ids"], dtype=np.int64),
            np.asarray(encoded["attention_mask"], dtype=np.int64),
        )


class TorchBackend:
    """transformers ``AutoModelForSequenceClassification`` on CPU or CUDA."""

    name = "torch"

    def __init__(self, ref: ModelRef, *, device: DeviceName, threads: int, max_length: int) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        from serving.architectures import register_architectures

        register_architectures()
        torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device is 'cuda' but torch sees no CUDA device on this replica")
        self.device: str = device
        self._torch = torch
        self._tokenize = _Tokenizer(ref.location, max_length)
        self._model = AutoModelForSequenceClassification.from_pretrained(ref.location).to(device).eval()

    def logits(self, texts: list[str]) -> Logits:
        batch = self._tokenize(texts)
        with self._torch.inference_mode():
            output = self._model(
                input_ids=self._torch.from_numpy(batch.input_ids).to(self.device),
                attention_mask=self._torch.from_numpy(batch.attention_mask).to(self.device),
            )
        return np.asarray(output.logits.float().cpu().numpy(), dtype=np.float32)


class OnnxBackend:
    """ONNX Runtime on ``model.onnx`` (or the int8 copy), CUDA provider where asked for and present."""

    name = "onnx"

    def __init__(
        self,
        ref: ModelRef,
        *,
        device: DeviceName,
        threads: int,
        max_length: int,
        quantized: bool = False,
    ) -> None:
        import onnxruntime as ort

        path = Path(ref.location) / (ONNX_INT8_NAME if quantized else ONNX_NAME)
        if not path.exists():
            raise ArtifactError(f"{path} does not exist; export the model to ONNX first")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        # onnxruntime-gpu lists CUDA as available even without a GPU; what the session really got
        # is the truth.
        active = self._session.get_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in active:
            raise ConfigError("device is 'cuda' but ONNX Runtime could not start its CUDA provider")
        self.device = "cuda" if "CUDAExecutionProvider" in active else "cpu"
        self._tokenize = _Tokenizer(ref.location, max_length)

    def logits(self, texts: list[str]) -> Logits:
        batch = self._tokenize(texts)
        (logits,) = self._session.run(
            ["logits"], {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        )
        return np.asarray(logits, dtype=np.float32)


def load_backend(
    ref: ModelRef,
    *,
    backend: BackendName = "auto",
    device: DeviceName = "auto",
    threads: int = 1,
    max_length: int = 128,
) -> Backend:
    """Open ``ref`` with the backend the config asks for (``auto``: ONNX when there is a model.onnx)."""
    if backend == "onnx" or (backend == "auto" and ref.has_onnx):
        return OnnxBackend(ref, device=device, threads=threads, max_length=max_length)
    return TorchBackend(ref, device=device, threads=threads, max_length=max_length)
