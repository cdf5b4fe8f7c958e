"""REST service (FastAPI) and web page: /verify, /embed, /identify, /gallery, /model-card,
/health, and the page at /.

``siamface serve`` runs it with uvicorn; ``create_app`` builds the app for tests or for your
own ASGI server. See docs/ship.md. Importing this package is light: FastAPI loads with the
names below.
"""

from __future__ import annotations

__all__ = ["API_KEY_HEADER", "ApiError", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from siamface.serve.app import create_app  # lazy: --help speed (fastapi, pydantic)

        return create_app
    if name == "ApiError":
        from siamface.serve.errors import ApiError  # lazy: --help speed (fastapi, pydantic)

        return ApiError
    if name == "API_KEY_HEADER":
        from siamface.serve.routes.deps import (  # lazy: --help speed (fastapi, pydantic)
            API_KEY_HEADER,  # lazy: --help speed (fastapi, pydantic)
        )

        return API_KEY_HEADER
    raise AttributeError(name)
