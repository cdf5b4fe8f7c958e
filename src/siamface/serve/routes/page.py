"""The web page for people (``GET /``), its model card (``GET /model-card``) and the plots of
the served evaluation report (``GET /report/{kind}.png``).

The page is plain HTML, CSS and JavaScript shipped inside the package (``serve/static``): no
build step, nothing fetched from elsewhere. It only calls the public REST endpoints, so what it
shows is what any client gets.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from siamface.serve.errors import NoReport
from siamface.serve.model_card import model_card
from siamface.serve.routes.deps import get_service
from siamface.serve.schemas import ErrorOut, ModelCardOut
from siamface.serve.service import Service

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

#: The page loads nothing from other origins; camera frames and crops are blob:/data: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
        "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/model-card", response_model=ModelCardOut, tags=["service"])
async def card(svc: Service = Depends(get_service)) -> dict:
    """The served model: backbone, embedding size, provenance, threshold and what it means,
    and the evaluation report's metrics and plots when the server has one."""
    return model_card(svc)


@router.get(
    "/report/{kind}.png",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorOut}},
    tags=["service"],
)
async def report_plot(kind: str, svc: Service = Depends(get_service)) -> FileResponse:
    """A plot of the served evaluation report: ``roc``, ``det`` or ``histogram``."""
    if svc.report is None:
        raise NoReport("this server has no evaluation report (start it with --report DIR)")
    path = svc.report.plots.get(kind)
    if path is None:
        known = ", ".join(sorted(svc.report.plots)) or "none"
        raise NoReport(f"the report has no {kind!r} plot (available: {known})", field="kind")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})
