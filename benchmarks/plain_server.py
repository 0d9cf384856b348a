"""The reference a user could write instead of the gateway: one uvicorn process, the student, no Ray.

    python -m benchmarks.plain_server --student runs/benchmark/banking77/student-bag --port 8098

Same artifact and the project's own backend (``serving.backends.load_backend``: ONNX Runtime when the
folder has ``model.onnx``), one call per request, the same ``/v1/classify`` request and the same
answer, field for field (a probability per label and text included), encoded by the same orjson. No
cascade, no metrics, no auth, no limits: what is left is the floor of the work itself, and
``cascade loadtest`` shows the gateway beside it.

It used to answer only ``label``, ``confidence`` and ``served_by``: on BANKING77 a one-text answer
of about 110 bytes against the gateway's 3.7 KB (77 scores), so the comparison charged the gateway
for work the reference skipped.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.backends import load_backend
from serving.model_ref import resolve_model


def answer_body(backend: Any, labels: Sequence[str], versions: dict[str, str], body: bytes) -> bytes:
    """The whole answer to one ``/v1/classify`` body: parse, one model call, a result per text, encode."""
    inputs = orjson.loads(body)["inputs"]
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    logits = backend.logits(texts)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = exp / exp.sum(axis=1, keepdims=True)
    results = [
        {
            "label": labels[int(row.argmax())],
            "confidence": float(row.max()),
            "served_by": "student",
            "escalated": False,
            "scores": dict(zip(labels, row.tolist(), strict=True)),
            "degraded": False,
            "degraded_reason": None,
        }
        for row in probs
    ]
    return orjson.dumps({"results": results, "model_versions": versions})


def build(student: str, threads: int) -> Starlette:
    ref = resolve_model(student)
    backend = load_backend(ref, threads=threads)
    labels = ref.labels
    versions = {"student": ref.version}

    async def classify(request: Request) -> Response:
        return Response(answer_body(backend, labels, versions, await request.body()), media_type="application/json")

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/classify", classify, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", healthz),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="the student's folder (the same one the gateway serves)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(build(args.student, args.threads), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
