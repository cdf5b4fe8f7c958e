"""The service's endpoints, one APIRouter per concern (see :data:`ROUTERS`)."""

from siamface.serve.routes import batch, embed, gallery, health, identify, page, verify, watch

#: Included by ``create_app`` in this order.
ROUTERS = (
    page.router,
    health.router,
    verify.router,
    embed.router,
    identify.router,
    batch.router,
    gallery.router,
    watch.router,
)

__all__ = ["ROUTERS"]
