"""The Celery application and its configuration; nothing else.

Start a worker with ``celery -A worker.app worker -Q interactive,batch``. The
configuration is computed from :class:`core.settings.Settings` the first time Celery
reads it, so importing this module does no I/O and reads no environment. The one piece
of Celery genq replaces is its event dispatcher's batching (:class:`EventDispatcher`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher as CeleryEventDispatcher
from kombu import Exchange, Queue

from core.connections import sentinel_options
from core.contract import QUEUE_BATCH, QUEUE_INTERACTIVE, TASK_GENERATE
from core.logs import configure_logging
from core.settings import Settings, get_settings

__all__ = ["QUEUES", "EventDispatcher", "app", "celery_config"]

QUEUES = (QUEUE_INTERACTIVE, QUEUE_BATCH)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for genq; every choice that is not Celery's default says why."""
    url = settings.redis_url
    transport: dict[str, Any] = {
        # Must exceed the hard time limit, or a running job gets a second, concurrent copy.
        "visibility_timeout": settings.visibility_timeout_s,
        # A killed worker's unacked jobs come back on the next sweep; kombu's default
        # throttle (10) stretches the sweep period to ~100 s.
        "unacked_restore_interval": settings.unacked_restore_interval_s,
        "unacked_restore_throttle": 1,
        # A hung Redis must raise, not block a publisher forever.
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        # Poll the queues in the order a worker lists them (-Q interactive,batch), not
        # in turns: an interactive job never waits behind a batch's backlog.
        "queue_order_strategy": "priority",
    }
    backend: dict[str, Any] = {"socket_timeout": settings.redis_socket_timeout_s}
    if settings.uses_sentinel:
        # kombu's sentinel transport and Celery's sentinel backend: the same master.
        sentinel = {
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": sentinel_options(settings),
        }
        transport |= sentinel
        backend |= sentinel
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": transport,
        "result_backend_transport_options": backend,
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle payload on a shared broker is remote code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # The job record in Redis is the result clients read; a second copy in the
        # result backend would double the writes and subscribe per published task.
        "task_ignore_result": True,
        # One backend object for the process, not one per pool thread: each would
        # look its class up in the installed packages' entry points (~9 ms of CPU
        # here) and open its own connection pool, 128 times over as a worker starts.
        # Safe while results are ignored: the backend's pub/sub consumer, which is not
        # thread-safe, serves only result waits (AsyncResult.get), which genq never does.
        "result_backend_thread_safe": True,
        # Ack after the work, and requeue if the process running it dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        # Declared, not only created on first use: Flower lists the queues the app
        # declares, so both show on its Broker page even before a worker runs. Each has
        # its own exchange and key; left to defaults, both would bind to the default
        # exchange with the same key, and a publish by exchange would reach both.
        "task_queues": [Queue(q, Exchange(q), routing_key=q) for q in QUEUES],
        "task_default_queue": QUEUE_INTERACTIVE,
        "task_routes": {TASK_GENERATE: {"queue": QUEUE_INTERACTIVE}},
        "task_create_missing_queues": True,
        "worker_pool": settings.worker_pool,
        "worker_concurrency": settings.worker_concurrency,
        # On from a worker's start (GENQ_TASK_EVENTS), so Flower lists every task it sees
        # run; left to Flower's --enable-events, a worker sends none until Flower's next
        # broadcast (every 5 s), and none of the tasks run before it show. Each task's three
        # events cost ~1 ms of worker CPU (4.1 → 5.4 ms a job at 0 ms upstream latency,
        # 4.7 → 5.6 at 50 ms: docs/benchmarks.md), lost in a real upstream's seconds.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
    }


def _lazy_config() -> dict[str, Any]:
    return celery_config(get_settings())


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _format_logs(logger: logging.Logger, loglevel: int | None = None, **_: Any) -> None:
    # Celery sets up its handlers; genq gives them its event-with-fields format, and its
    # own loggers the worker's --loglevel unless GENQ_LOG_LEVEL says otherwise.
    configure_logging(get_settings(), handlers=logger.handlers, level=loglevel)


class EventDispatcher(CeleryEventDispatcher):
    """Celery's event dispatcher, publishing each task event as it is sent.

    A worker with an event loop (the threads pool on Redis has one) batches task events
    in a list that its pool threads append to while the loop thread publishes the batch
    and then empties it: an event appended in between is never sent (celery/celery
    #10434), and Flower shows its task RECEIVED or STARTED for good (41 to 51 of 131 in
    tests/integration/test_flower_states.py). Without a batch, each event is published
    at once, under the dispatcher's lock."""

    def __init__(self, *args: Any, buffer_group: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)


class _Events(Events):
    dispatcher_cls = f"{__name__}:EventDispatcher"


app = Celery("genq", include=["worker.tasks"], events=_Events)
app.add_defaults(_lazy_config)
