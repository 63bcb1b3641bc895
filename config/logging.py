"""One structlog setup for every entry point: ISO UTC timestamps, JSON off a TTY, a console renderer on one.

Whatever the renderer, a traceback never shows local variables: a frame's locals hold what it was working on — a
request's `X-Keytrail-Token` and signature headers, a sink's token — and rich tracebacks (structlog's console default)
print them. JSON lines carry the traceback as text, for structlog's own events and for stdlib records (uvicorn's
"Exception in ASGI application") alike. URLs in log lines are cut to `scheme://host`: httpx logs each request's URL,
and a Slack or CRM webhook URL is itself the credential.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from config.urls import mask_urls

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_MASKED_KEYS = ("event", "exception")


def mask_logged_urls(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Cut every URL in the message and the formatted traceback to `scheme://host` (see `config.urls.mask_urls`)."""
    for key in _MASKED_KEYS:
        value = event_dict.get(key)
        if isinstance(value, str):
            event_dict[key] = mask_urls(value)
    return event_dict


def renderer_chain(*, as_json: bool, colors: bool) -> list[Processor]:
    """The last processors of every log line: traceback formatting without locals, URL masking, rendering."""
    if as_json:
        # format_exc_info renders with the traceback module, which never prints locals.
        return [structlog.processors.format_exc_info, mask_logged_urls, structlog.processors.JSONRenderer()]
    exceptions: structlog.typing.ExceptionRenderer = (
        structlog.dev.RichTracebackFormatter(show_locals=False) if colors else structlog.dev.plain_traceback
    )
    return [mask_logged_urls, structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=exceptions)]


def configure_logging(level: str = "info", *, json: bool | None = None, stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger (RQ and uvicorn log through it) the same way."""
    out = stream or sys.stderr
    as_json = (not out.isatty()) if json is None else json
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    rendering = renderer_chain(as_json=as_json, colors=out.isatty())
    structlog.configure(
        processors=[*shared, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # uvicorn's own logging config (if anything in the process ran it) gives its loggers a plain handler and stops
    # them propagating: its tracebacks would then bypass the renderers above. They all go through the root handler.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's access log would print every request line; keytrail logs what matters itself.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # httpx logs every request at INFO; sinks and the bootstrap log the outcomes that matter themselves. At debug
    # its lines stay, their URLs masked (above).
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    # httpcore's debug trace prints raw response headers (a load balancer's session cookie among them) and says
    # nothing about a delivery that keytrail's own events and httpx's request line do not: kept quiet at every level.
    logging.getLogger("httpcore").setLevel(logging.INFO)
    # RQ logs several lines per job at INFO; keytrail logs one event per batch itself.
    if level != "debug":
        for name in ("rq.worker", "rq.queue", "rq.job", "rq.scheduler"):
            logging.getLogger(name).setLevel(logging.WARNING)
