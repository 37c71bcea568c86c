"""The HTTP API and the web page of ``simlearn-serve`` (FastAPI), around one :class:`SearchService`.

Routes: ``POST /search`` (an uploaded image, or a gallery item id), ``GET /items/{id}`` (the item's image),
``GET /items/{id}/neighbours``, ``GET /map``, the catalogue views ``GET /clusters``, ``GET /clusters/{c}`` and
``GET /duplicates`` (:mod:`simlearn.serve.views`), ``GET /info``, ``GET /health``, the page at ``/`` (its files under
``/static``) and the OpenAPI docs at ``/docs`` (Swagger UI, its files served by this process: no CDN). Every
refusal is a 4xx whose JSON body is ``{"detail": "<one line>"}``.

With an ``auth_token`` every route needs ``Authorization: Bearer <token>``, except ``/health`` and what holds no
data of the gallery: the page and its static files (its script sends the token, which it asks for) and the API's
description (``/docs``, ``/openapi.json``).
"""

from __future__ import annotations

import hmac
import json
import logging
import mimetypes
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simlearn.serve.service import BadRequest, NotFound, SearchService, TooLarge

log = logging.getLogger(__name__)

__all__ = ["STATIC_DIR", "create_app"]

#: The page's files (plain HTML, CSS and JavaScript: no build step, nothing fetched from elsewhere).
STATIC_DIR = Path(__file__).parent / "static"
#: Where Swagger UI's script, style and icon are served from (this process: /docs needs no CDN).
DOCS_ASSETS = "/docs-assets"
#: Routes that answer without the token: they hold nothing of the gallery.
PUBLIC_PATHS = frozenset({"/health", "/", "/docs", "/openapi.json", "/favicon.ico"})
#: The name of the bearer token's security scheme in the OpenAPI description.
BEARER_SCHEME = "bearerToken"
#: Room for the multipart headers and the small form fields around an upload of the largest allowed size.
FORM_OVERHEAD_BYTES = 64 * 1024
#: The page may load only its own files (and the blob: URLs of the images it fetched with the token).
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
#: The API page loads Swagger UI from this process only (its one inline script starts it; it styles inline).
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

SEARCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "image": {"type": "string", "format": "binary", "description": "an image file to search with"},
                    "id": {"type": "integer", "description": "or: a gallery item id to search from"},
                    "k": {"type": "integer", "description": "how many results (default: the service's k)"},
                    "class_name": {"type": "string", "description": "the uploaded image's class, to mark results"},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "k": {"type": "integer"}},
                "required": ["id"],
            }
        },
    },
}


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


class Guard:
    """ASGI middleware in front of every route: the bearer token (when set) and the size of request bodies.

    A body announced larger than allowed is refused before it is read; one without a length is counted while it is
    read and refused as soon as it passes the limit (never spooled to disk in full)."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        refused = self._refusal(headers) if self.token is not None and not _public(scope["path"]) else None
        if refused is not None:
            response = JSONResponse({"detail": refused}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        length = headers.get("content-length")
        kind = _body_kind(headers)
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            response = JSONResponse({"detail": _too_large(int(length), self.max_body, kind)}, status_code=413)
            await response(scope, receive, send)
            return
        await self.app(scope, _counted(receive, self.max_body, kind), send)

    def _refusal(self, headers: dict[str, bytes]) -> str | None:
        """Why the request is refused (one line: no token sent, another scheme, a wrong token), None when it holds
        the token."""
        given = headers.get("authorization")
        if not given or not given.strip():
            return "this service needs its access token: send the header 'Authorization: Bearer <token>'."
        scheme, _, token = given.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return "the Authorization header must be 'Bearer <token>' (the word Bearer, a space, the access token)."
        if not hmac.compare_digest(token.strip(), self.token or b""):
            return (
                "token refused: the access token sent is not this service's; send the token the service was started "
                "with (auth_token / SIMLEARN_SERVE_TOKEN)."
            )
        return None


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(("/static/", f"{DOCS_ASSETS}/"))


def swagger_assets() -> Path | None:
    """The folder of Swagger UI's files as the ``fastapi-offline`` package ships them (``swagger-ui-bundle.js``,
    ``swagger-ui.css``, ``favicon.png``), or None when it is not installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() and (folder / "swagger-ui.css").is_file() else None


def _body_kind(headers: dict[str, bytes]) -> str:
    """What a request body is, for the message that refuses it: an upload (a form) or a JSON body."""
    content_type = headers.get("content-type", b"").split(b";")[0].strip().lower()
    return "upload" if content_type in (b"multipart/form-data", b"application/x-www-form-urlencoded") else "body"


def _too_large(size: int, limit: int, kind: str = "upload") -> str:
    fix = (
        "send a smaller image (or start the service with a larger max_upload_mb)"
        if kind == "upload"
        else 'a search by id needs a few bytes of JSON, e.g. {"id": 3, "k": 5}'
    )
    return (
        f"the request has {size / 2**20:.1f} MB, more than this service takes ({limit / 2**20:.1f} MB with "
        f"max_upload_mb); {fix}."
    )


def _counted(receive: Receive, limit: int, kind: str) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge(_too_large(seen, limit, kind))
        return message

    return counted


def create_app(service: SearchService, auth_token: str | None = None) -> FastAPI:
    """The FastAPI app of ``service``; with ``auth_token``, clients must send it as a bearer token."""
    app = FastAPI(
        title="simlearn-serve",
        summary="Image similarity search with a trained simlearn model",
        description=(
            "Search a gallery by an uploaded image or by one of its items; cosine similarity and angle per result. "
            'Items are named by `id` (0 … N-1). Errors are `{"detail": "<one line>"}`.'
        ),
        version="1",
        docs_url=None,  # FastAPI's own page loads Swagger UI from a CDN: blank offline. Served from here below
        redoc_url=None,
    )
    app.add_middleware(Guard, token=auth_token, max_body=service.limits.max_upload_bytes + FORM_OVERHEAD_BYTES)
    _error_handlers(app)
    if auth_token:
        _declare_bearer(app)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _api_page(app)

    @app.get("/health", summary="Liveness: always answers, without the token")
    def health() -> dict[str, Any]:
        return {"status": "ok", "items": service.size}

    @app.get("/info", summary="The gallery, the model and the limits")
    def info() -> dict[str, Any]:
        return service.info()

    @app.post(
        "/search",
        summary="The top k of an uploaded image or of a gallery item",
        openapi_extra={"requestBody": SEARCH_BODY},
    )
    async def search(request: Request) -> dict[str, Any]:
        fields = await _search_fields(request)
        image, item = fields.get("image"), fields.get("id")
        k = fields.get("k", request.query_params.get("k"))
        if image is not None and item not in (None, ""):
            raise BadRequest("give either an image or an id to search with, not both.")
        if isinstance(image, UploadFile):
            try:
                with service.upload_slot():  # 503 when decodes and queue are full, before reading it in
                    data = await image.read(service.limits.max_upload_bytes + 1)
                    if len(data) > service.limits.max_upload_bytes:
                        raise TooLarge(service.too_large_message(len(data)))
                    class_name = fields.get("class_name")
                    class_name = class_name if isinstance(class_name, str) else None
                    return await run_in_threadpool(service.search_upload, data, k, class_name)
            finally:
                await image.close()
        if image is not None:
            raise BadRequest("'image' must be a file sent as multipart/form-data (e.g. curl -F image=@photo.png).")
        if item not in (None, ""):
            return await run_in_threadpool(service.neighbours, item, k)
        raise BadRequest(
            "nothing to search with: send an image file as multipart field 'image' (curl -F image=@photo.png "
            'URL/search), or a gallery item as field \'id\' (JSON {"id": 3, "k": 5}).'
        )

    @app.get(
        "/items/{item_id}",
        summary="The image of a gallery item: its file, or a PNG of its pixels (in-memory data)",
        response_class=Response,
    )
    def item_image(item_id: str) -> Response:
        image = service.item_image(item_id)
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}
        if isinstance(image, bytes):
            return Response(image, media_type="image/png", headers=headers)
        media_type = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
        return FileResponse(image, media_type=media_type, headers=headers)

    @app.get("/items/{item_id}/neighbours", summary="The top k of a gallery item (itself left out)")
    def item_neighbours(item_id: str, k: str | None = None) -> dict[str, Any]:
        return service.neighbours(item_id, k)

    @app.get("/map", summary="2-D coordinates of the gallery's embeddings (t-SNE or PCA), with labels and clusters")
    def gallery_map() -> dict[str, Any]:
        return service.map()

    @app.get("/clusters", summary="The gallery's clusters: size, mean cosine, labels inside, NMI/AMI when labelled")
    def clusters() -> dict[str, Any]:
        return service.clusters()

    @app.get("/clusters/{cluster}", summary="The items of a cluster, nearest its centre first (paged)")
    def cluster_items(cluster: str, offset: str | None = None, limit: str | None = None) -> dict[str, Any]:
        return service.cluster(cluster, offset, limit)

    @app.get("/duplicates", summary="The near-duplicate groups, largest first, the item to keep first (paged)")
    def duplicates(offset: str | None = None, limit: str | None = None) -> dict[str, Any]:
        return service.duplicates(offset, limit)

    return app


def _declare_bearer(app: FastAPI) -> None:
    """The bearer token in the API's description (``components.securitySchemes``, and ``security`` on each route
    that needs it), so that Swagger UI on /docs shows its Authorize button and sends the token with "Try it out"."""
    describe = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = describe()
            schema.setdefault("components", {})["securitySchemes"] = {
                BEARER_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the service's access token (auth_token / SIMLEARN_SERVE_TOKEN)",
                }
            }
            for path, operations in schema.get("paths", {}).items():
                if not _public(path):
                    for operation in operations.values():
                        operation["security"] = [{BEARER_SCHEME: []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _api_page(app: FastAPI) -> None:
    """``/docs``: Swagger UI with its script and style served by this process (from the ``fastapi-offline``
    package), so that it works without network access; without that package, a one-line 404 that points to
    ``/openapi.json``."""
    assets = swagger_assets()
    if assets is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def api_page() -> HTMLResponse:
        if assets is None:
            raise NotFound(
                "the interactive API page needs the fastapi-offline package (pip install 'simlearn[serve]'); the API "
                "is described at /openapi.json."
            )
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} · API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            # no validator badge: Swagger UI would send the API description to validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        page.headers["Cache-Control"] = "no-cache"
        return page


async def _search_fields(request: Request) -> dict[str, Any]:
    """The fields of a search request: a multipart or url-encoded form, or a JSON object."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=10)
        return {key: form.get(key) for key in form}
    if content_type == "application/json" or not content_type:
        body = await request.body()
        if not body:
            return {}
        if not content_type:
            raise BadRequest("the body has no content type; send multipart/form-data or application/json.")
        try:
            fields = json.loads(body)
        except RecursionError as error:  # arrays or objects nested hundreds deep: Python's parser gives up
            raise BadRequest(
                'the JSON body is nested too deeply; send a flat object such as {"id": 3, "k": 5}.'
            ) from error
        except ValueError as error:
            raise BadRequest(f'the body is not valid JSON ({error}); send e.g. {{"id": 3, "k": 5}}.') from error
        if not isinstance(fields, dict):
            raise BadRequest('the JSON body must be an object such as {"id": 3, "k": 5}.')
        return fields
    raise BadRequest(
        f"unsupported content type {content_type!r}: send multipart/form-data with an 'image' file, or JSON "
        f'{{"id": …, "k": …}}.'
    )


def _error_handlers(app: FastAPI) -> None:
    """Every refusal as ``{"detail": "<one line>"}`` with its 4xx status; an unexpected error as a 500 (logged), after
    which the service keeps serving."""

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, error: BadRequest) -> JSONResponse:
        return JSONResponse(
            {"detail": _one_line(error)}, status_code=error.status, headers=getattr(error, "headers", None)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail
        if error.status_code == 404 and detail == "Not Found":
            detail = f"no such page or route: {request.url.path[:80]}; the API is described at /docs."
        elif error.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path[:80]}; see /docs."
        return JSONResponse({"detail": _one_line(detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(part) for part in problem.get('loc', ())[1:]) or 'request'}: {problem.get('msg')}"
            for problem in error.errors()[:3]
        ]
        return JSONResponse({"detail": _one_line("; ".join(problems))}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("error while answering %s %s", request.method, request.url.path)
        return JSONResponse(
            # the exception's name is for the log, not for the client (the page shows this line as it is)
            {"detail": "internal error while answering this request; the service logged it and keeps serving."},
            status_code=500,
        )
