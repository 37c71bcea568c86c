"""``simlearn-serve``: a trained model and a gallery as an HTTP search service with a web page.

:class:`SearchService` holds the model and the gallery and answers searches (no HTTP); :func:`create_app` is the
FastAPI app around it (the API, the page, the OpenAPI docs); :func:`serve` is the command: checks, then uvicorn.
"""

from simlearn.serve.app import create_app
from simlearn.serve.server import serve
from simlearn.serve.service import SearchService, ServiceLimits, open_service

__all__ = ["SearchService", "ServiceLimits", "create_app", "open_service", "serve"]
