"""The HTTP layer: FastAPI routes and error mapping around ``serving.gateway.Gateway``, as Ray Serve's ingress.

    HTTP ─▶ front HAProxy ─▶ Ray's HAProxy ─▶ GatewayIngress (this module: routes, body reading, error shape)
                                                └─ Gateway (serving.gateway: validate, cascade, metrics, log, shadow)
                                                     ├─handle─▶ ModelReplica "student" (or in this process)
                                                     └─handle─▶ ModelReplica "teacher" (serving.replica)

Errors map to the one body shape here, through ``serving.errors.error_response``.

``POST /v1/classify`` is answered below FastAPI (``ClassifyFirst``): at a thousand requests a second,
FastAPI's routing, dependency solving and middleware were a tenth of the ingress's event loop for
a route that needs none of them. FastAPI still declares the route (OpenAPI, 405 for other methods)
and answers everything else.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` annotations
# of the ingress methods, which Ray Serve's class-based ingress wraps.
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson
import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import constants as c
from serving.errors import CascadeError, ClientGone, error_headers, error_response
from serving.gateway import Gateway
from serving.schemas import ClassifyRequest, ClassifyResponse, ErrorResponse, check_content_type

logger = logging.getLogger("cascade.http")

app = FastAPI(
    title="cascade-gateway",
    summary="A distilled student answers; an uncertain one escalates to the teacher.",
    version="0.1.0",
    docs_url=None,  # served below from the swagger-ui-bundle package: FastAPI's default loads a CDN
    redoc_url=None,
    redirect_slashes=False,  # /v1/classify/ is a 404 in the error shape, not an empty 307
)

# Swagger UI from a package, not a CDN, so /docs works on a machine without internet access.
_SWAGGER_FILES = Path(swagger_ui_bundle.swagger_ui_path)
_SWAGGER_ASSETS = {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}


@app.get("/docs", include_in_schema=False)
async def _docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="cascade-gateway: API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-32x32.png",
    )


@app.get("/docs/assets/{name}", include_in_schema=False)
async def _docs_asset(name: str) -> FileResponse:
    if name not in _SWAGGER_ASSETS:
        raise StarletteHTTPException(404, f"no documentation asset {name!r}")
    return FileResponse(_SWAGGER_FILES / name)


@app.exception_handler(StarletteHTTPException)
async def _http_exception(_: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse({"error": {"type": kind, "message": str(error.detail)}}, error.status_code)


async def _one_error_shape(request: Request, error: Exception) -> JSONResponse:
    """Turn any failure into the one error body (``serving.errors.error_response``), logged with the request id.

    An exception handler, not an HTTP middleware: Starlette's BaseHTTPMiddleware costs every request
    an extra task and stream wrapper. The request id is Ray Serve's: its proxy takes ``X-Request-Id``
    from the request or makes one, hands it to us in the request headers, and returns it.
    """
    status, body = error_response(error)
    if status >= 500:
        logger.error("request %s failed", safe_request_id(request.headers.get("x-request-id")), exc_info=error)
    return JSONResponse(body, status, headers=error_headers(error))


# Ours (4xx and 503) through Starlette's exception middleware; anything else through its server-error
# middleware, which answers with the same body (and re-raises, so the failure is also logged by Serve).
app.add_exception_handler(CascadeError, _one_error_shape)
app.add_exception_handler(Exception, _one_error_shape)


_CLASSIFY_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ClassifyRequest.model_json_schema()}},
    }
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 413, 415, 422, 429, 500, 503, 504)
}
_MODELS_ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (401, 429)}


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def safe_request_id(header: str | None) -> str:
    """The client's ``X-Request-Id`` if it is short and plain; otherwise a new one (what we log and store)."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CLASSIFY_PATH = "/v1/classify"
_WANTED_HEADERS = {b"authorization", b"content-type", b"content-length", b"x-request-id"}


def request_headers(scope: Scope) -> dict[str, str]:
    """The request headers classify reads, by lower-case name (the first of repeated ones, as Starlette does)."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED_HEADERS:
            found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


async def read_body(receive: Receive, limit: int) -> bytes:
    """The body, read no further than one chunk past ``limit`` (validation then reports the size)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client closed the connection before its request body arrived")
        body.extend(message.get("body", b""))
        if len(body) > limit or not message.get("more_body", False):
            return bytes(body)


async def send_answer(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """One JSON response, headers and body (Ray's request-id middleware adds ``X-Request-Id`` on the way)."""
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw.extend((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ClassifyFirst:
    """The ingress's ASGI app: ``POST /v1/classify`` straight to ``GatewayIngress.classify_answer``,
    everything else (and lifespan) to the FastAPI app."""

    def __init__(self, ingress: "GatewayIngress", app: Any) -> None:
        self._ingress = ingress
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CLASSIFY_PATH and scope["method"] == "POST":
            try:
                status, body, headers = await self._ingress.classify_answer(request_headers(scope), receive)
            except ClientGone:
                return  # nobody to answer
            await send_answer(send, status, body, headers)
            return
        await self._app(scope, receive, send)

    def add_exception_handler(self, error: Any, handler: Any) -> None:
        """Ray Serve adds its own handlers (back-pressure) to the app it is given: they belong to FastAPI's."""
        self._app.add_exception_handler(error, handler)


@serve.deployment
@serve.ingress(app)
class GatewayIngress(Gateway):
    """``Gateway`` behind HTTP routes: the application's ingress deployment."""

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=_ERROR_RESPONSES,
        openapi_extra=_CLASSIFY_OPENAPI,
    )
    async def classify(self, request: Request) -> Response:
        """Classify one text or a list of texts; the cascade decides who answers unless ``route`` says.

        When served, ``ClassifyFirst`` answers this route before FastAPI sees it, with the same
        ``classify_answer``: this declaration documents it (``response_model``; a test checks the
        shape) and answers only where the FastAPI app runs on its own.
        """
        status, body, headers = await self.classify_answer(dict(request.headers), request.receive)
        return Response(body, status, headers, media_type="application/json")

    async def classify_answer(self, headers: dict[str, str], receive: Receive) -> tuple[int, bytes, dict[str, str]]:
        """Status, JSON body and extra headers of one classify request (``headers`` by lower-case name).

        Errors become the one error body here (``serving.errors``); a 5xx is logged with the request id.
        """
        try:
            caller = self.identify(headers.get("authorization"))
            check_content_type(headers.get("content-type"))
            self.check_declared_size(headers.get("content-length"))
            body = await read_body(receive, self.max_body_bytes)
            answer = await self.answer(body, safe_request_id(headers.get("x-request-id")), caller)
        except ClientGone:
            raise
        except Exception as error:
            status, payload = error_response(error)
            self.record_response(status)
            if status >= 500:
                logger.error("request %s failed", safe_request_id(headers.get("x-request-id")), exc_info=error)
            return status, orjson.dumps(payload), error_headers(error)
        self.record_response(200)
        # Encoded by orjson: with a score per label and text, the standard library's encoder took a
        # fifth of the ingress's event loop at 8 texts per request (py-spy, by hand; 144 → 190 requests/s).
        return 200, orjson.dumps(answer), {}

    def __serve_build_asgi_app__(self) -> ClassifyFirst:
        """Ray Serve asks for the ASGI app once this replica is constructed: FastAPI's, classify first."""
        return ClassifyFirst(self, self.app)  # type: ignore[attr-defined]  # set by @serve.ingress's wrapper

    @app.get("/v1/models", responses=_MODELS_ERRORS)
    async def models(self, request: Request) -> dict[str, Any]:
        """The models behind each role, and the cascade rule in force."""
        self.identify(request.headers.get("authorization"))
        return self.describe()

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """The ingress process is alive (it says nothing about the models)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "a role is not loaded or not answering"}})
    async def readyz(self) -> JSONResponse:
        """Both roles are loaded and answering."""
        roles = await self.readiness(c.READINESS_PROBE_TIMEOUT_S)
        ready = all(state == "ready" for state in roles.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "roles": roles}, 200 if ready else 503)


__all__ = ["GatewayIngress", "app"]
