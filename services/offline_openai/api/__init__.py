"""HTTP routes of the offline OpenAI-compatible server (aiohttp).

Handlers are thin: parse the request, call the store / model, shape the answer the
way the `openai` SDK parses it. Errors are `ApiError`s, turned into OpenAI's error
JSON by one middleware, which also counts requests, applies faults and logs.

One module per API family (``chat``, ``responses``: Responses and Conversations,
``assistants``), the models list and control routes (``control``), the middleware,
request parsing (``http``) and cursor paging (``paging``).
"""

from __future__ import annotations

from aiohttp import web

from ..clock import SimClock
from ..config import OfflineConfig
from ..faults import Faults
from ..generation import OfflineModel
from ..stats import Stats
from ..store import StateStore
from .assistants import AssistantsRoutes
from .chat import ChatRoutes
from .control import ControlRoutes, ModelRoutes
from .middleware import RequestMiddleware
from .responses import ResponsesRoutes
from .routes import ApiState

__all__ = ["OfflineApi"]


class OfflineApi:
    """The routes, over one store, one model and one fault plan."""

    def __init__(
        self,
        config: OfflineConfig,
        store: StateStore,
        model: OfflineModel,
        faults: Faults,
        stats: Stats,
        clock: SimClock | None = None,
    ) -> None:
        self.state = ApiState(config, store, model, faults, stats,
                              clock if clock is not None else model.cache.clock)

    @property
    def closing(self) -> bool:
        return self.state.closing

    @closing.setter
    def closing(self, value: bool) -> None:
        """Set when the server stops: a request the HANG fault holds gives up."""
        self.state.closing = value

    def build(self) -> web.Application:
        middleware = RequestMiddleware(self.state)
        app = web.Application(middlewares=[middleware.handle], client_max_size=64 * 1024 * 1024)
        for routes in (ChatRoutes, ResponsesRoutes, AssistantsRoutes, ModelRoutes, ControlRoutes):
            routes(self.state).add_to(app.router)
        return app
