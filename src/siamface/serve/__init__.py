"""REST service (FastAPI): /verify, /embed, /identify, /gallery/people, /health.

``siamface serve`` runs it with uvicorn; ``create_app`` builds the app for tests or for your
own ASGI server. See docs/ship.md.
"""

from siamface.serve.app import API_KEY_HEADER, ApiError, create_app

__all__ = ["API_KEY_HEADER", "ApiError", "create_app"]
