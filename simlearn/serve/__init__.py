"""``simlearn-serve``: a trained model and a gallery as an HTTP search service with a web page.

:class:`SearchService` holds the model and the gallery and answers searches (no HTTP); :func:`create_app` is the
FastAPI app around it (the API, the page, the OpenAPI docs); :func:`serve` is the command: checks, then uvicorn.

The names are imported when first used: ``simlearn.serve.server`` (the command's checks) loads without torch, so
that a refused address is answered at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simlearn.serve.app import create_app
    from simlearn.serve.server import serve
    from simlearn.serve.service import SearchService, ServiceLimits, open_service

__all__ = ["SearchService", "ServiceLimits", "create_app", "open_service", "serve"]

_HOMES = {
    "SearchService": "simlearn.serve.service",
    "ServiceLimits": "simlearn.serve.service",
    "open_service": "simlearn.serve.service",
    "create_app": "simlearn.serve.app",
    "serve": "simlearn.serve.server",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
