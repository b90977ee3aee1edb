"""Settings: every setting chard reads, with its default and a one-line doc.

Names are Celery's lowercase setting names, so ``app.conf.update(result_expires=3600)``
and a Django ``CELERY_``-prefixed settings module work unchanged. ``app.conf`` is a
mapping with attribute access; unknown keys are kept (user settings live there too).
"""

from __future__ import annotations

import copy
import importlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chard._utils.imports import import_string
from chard.exceptions import ImproperlyConfigured
from chard.protocol.topology import Topology


@dataclass(frozen=True)
class Setting:
    """One documented setting."""

    default: Any
    doc: str


#: Every setting chard knows. Celery's name, Celery's default unless the doc says otherwise.
SETTINGS: dict[str, Setting] = {
    # -- broker ----------------------------------------------------------------
    "broker_url": Setting(
        None, "Broker URL; none given = embedded SQLite file ./chard.sqlite3 (chard default)"
    ),
    "broker_transport_options": Setting(
        {}, "Options for the broker transport (lease_timeout, global_keyprefix, ...)"
    ),
    "broker_connection_retry_on_startup": Setting(True, "Retry connecting when the worker starts"),
    "broker_connection_retry": Setting(True, "Retry a lost broker connection in the worker"),
    "broker_connection_max_retries": Setting(100, "Give up reconnecting after this many tries"),
    # -- results ---------------------------------------------------------------
    "result_backend": Setting(
        None,
        "Result backend URL; none = results disabled, unless no broker is set either "
        "(then the same embedded SQLite file)",
    ),
    "result_backend_transport_options": Setting({}, "Options for the result backend"),
    "result_expires": Setting(86400.0, "Seconds to keep results (None or 0: forever)"),
    "result_extended": Setting(False, "Store name, args, kwargs, worker, retries and queue too"),
    "result_serializer": Setting("json", "Serializer for results (json only in stored metas)"),
    "result_accept_content": Setting(None, "Content types accepted for results (None: as tasks)"),
    # -- tasks -----------------------------------------------------------------
    "task_serializer": Setting("json", "Serializer of task arguments"),
    "accept_content": Setting(["json"], "Content types a worker decodes; pickle only if listed"),
    "task_default_queue": Setting("celery", "Queue for tasks without a route"),
    "task_routes": Setting(None, "Routes: dict/glob/regex/callable(s) mapping names to queues"),
    "task_default_priority": Setting(None, "Priority when none is given (0 highest .. 9 lowest)"),
    "task_default_queue_type": Setting(
        "classic", "RabbitMQ: the type of the queues chard declares (classic or quorum)"
    ),
    "task_queue_max_priority": Setting(
        None, "RabbitMQ: declare queues with x-max-priority (there, higher = more urgent)"
    ),
    "task_queues": Setting(
        None, "Queue declarations: Queue(name, Exchange(name, type), routing_key), or dicts"
    ),
    "task_default_exchange": Setting(None, "RabbitMQ: exchange of queues with none set"),
    "task_default_exchange_type": Setting("direct", "RabbitMQ: type of the default exchange"),
    "task_default_routing_key": Setting(None, "Routing key of queues without one (None: queue)"),
    "task_create_missing_queues": Setting(True, "Declare a queue no task_queues entry names"),
    "task_create_missing_queue_type": Setting(
        "classic", "RabbitMQ: type of the queues task_queues does not name (classic or quorum)"
    ),
    "task_create_missing_queue_exchange_type": Setting(
        None, "RabbitMQ: exchange type of the queues task_queues does not name (None: direct)"
    ),
    "task_always_eager": Setting(False, "Run tasks inline on apply_async() (tests, debugging)"),
    "task_eager_propagates": Setting(False, "Re-raise a failing eager task's exception"),
    "task_allow_error_cb_on_chord_header": Setting(
        False, "chord.link_error() links the errback to every header task too"
    ),
    "task_store_eager_result": Setting(False, "Store eager results in the backend"),
    "task_ignore_result": Setting(False, "Do not store results by default"),
    "task_track_started": Setting(False, "Store STARTED when a task starts"),
    "task_acks_late": Setting(
        True,
        "Ack after the task finished (chard default True: at-least-once; Celery's is False)",
    ),
    "task_acks_on_failure_or_timeout": Setting(True, "With acks_late, ack failed tasks too"),
    "task_reject_on_worker_lost": Setting(
        True, "Redeliver a task whose process died (bounded by task_max_deliveries)"
    ),
    "task_max_deliveries": Setting(
        5, "Deliveries before a message whose worker keeps dying is failed and dead-lettered"
    ),
    "task_time_limit": Setting(None, "Hard time limit in seconds (prefork kills the child)"),
    "task_soft_time_limit": Setting(None, "Soft time limit: SoftTimeLimitExceeded in the task"),
    "task_default_retry_delay": Setting(180.0, "Seconds before a retry without countdown"),
    "task_annotations": Setting(None, "Per-task attribute overrides {name: {attr: value}}"),
    "task_publish_retry": Setting(True, "Retry publishing when the broker connection fails"),
    "task_publish_retry_policy": Setting(
        {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
        "Retry policy for publishing (Celery's keys)",
    ),
    "task_send_sent_event": Setting(
        False, "Clients send a task-sent event for each message they publish"
    ),
    # -- worker ----------------------------------------------------------------
    "worker_concurrency": Setting(None, "Pool size; None = number of CPUs"),
    "worker_pool": Setting(
        "prefork", "prefork | threads | solo | gevent (gevent: pass -P gevent, to patch first)"
    ),
    "worker_autoscale": Setting(
        None, "(max, min) or 'max,min': grow the prefork pool while tasks wait, shrink idle"
    ),
    "worker_prefetch_multiplier": Setting(4, "Messages leased ahead per pool slot"),
    "worker_max_tasks_per_child": Setting(None, "Replace a prefork child after this many tasks"),
    "worker_max_memory_per_child": Setting(
        None, "Replace a prefork child whose resident memory is over this many KiB after a task"
    ),
    "worker_send_task_events": Setting(
        False, "Workers send task and worker events (worker -E; control enable_events)"
    ),
    "worker_hijack_root_logger": Setting(True, "Let the CLI configure the root logger"),
    "worker_redirect_stdouts": Setting(True, "Redirect task prints to the log"),
    # -- time and beat ---------------------------------------------------------
    "timezone": Setting(None, "Time zone name for crontab and display (None: UTC)"),
    "enable_utc": Setting(True, "Keep internal times in UTC"),
    "beat_schedule": Setting({}, "Periodic tasks: {name: {task, schedule, args, kwargs, options}}"),
    "beat_max_loop_interval": Setting(300.0, "Longest beat sleep between schedule checks"),
    "beat_cron_starting_deadline": Setting(
        None, "Seconds a missed crontab run may still start late (None: any)"
    ),
    "beat_schedule_filename": Setting(
        "celerybeat-schedule",
        "Celery's beat state file (-s): its path is checked; chard keeps run state in the broker",
    ),
    "beat_scheduler": Setting(
        "celery.beat:PersistentScheduler",
        "Beat scheduler class; Celery's built-in names only (chard's schedule lives in the broker)",
    ),
    # -- a mixed Celery/chard fleet --------------------------------------------
    "chard_celery_compat": Setting(
        False,
        "Speak Celery's way where Celery cannot read chard's (a mixed fleet on Redis or "
        "RabbitMQ): countdown/ETA messages go to the ready queue, chords count with Celery's "
        "Redis keys, remote control (inspect, control, revoke) crosses Celery's pidbox both "
        "ways, events also go to Celery's celeryev exchange (RabbitMQ)",
    ),
    # -- dashboard -------------------------------------------------------------
    "dashboard_token": Setting(
        None, "Token that logs in to `chard dashboard` (env CHARD_DASHBOARD_TOKEN; chard's)"
    ),
    "dashboard_basic_auth": Setting(
        None, "'user:password' for `chard dashboard` (env CHARD_DASHBOARD_BASIC_AUTH; chard's)"
    ),
    # -- modules ---------------------------------------------------------------
    "imports": Setting((), "Modules to import when the worker starts"),
    "include": Setting((), "Same as imports (Celery(include=...))"),
}

#: Environment variables read when a setting was not given (Celery reads CELERY_*).
_ENV_FALLBACK = {
    "broker_url": ("CHARD_BROKER_URL", "CELERY_BROKER_URL"),
    "result_backend": ("CHARD_RESULT_BACKEND", "CELERY_RESULT_BACKEND"),
    "dashboard_token": ("CHARD_DASHBOARD_TOKEN",),
    "dashboard_basic_auth": ("CHARD_DASHBOARD_BASIC_AUTH",),
}

#: Celery 3 uppercase names still seen in old projects and Django settings.
_OLD_NAMES = {
    "BROKER_URL": "broker_url",
    "CELERY_RESULT_BACKEND": "result_backend",
    "CELERY_TASK_SERIALIZER": "task_serializer",
    "CELERY_RESULT_SERIALIZER": "result_serializer",
    "CELERY_ACCEPT_CONTENT": "accept_content",
    "CELERY_TIMEZONE": "timezone",
    "CELERY_ENABLE_UTC": "enable_utc",
    "CELERY_ALWAYS_EAGER": "task_always_eager",
    "CELERY_ROUTES": "task_routes",
    "CELERYBEAT_SCHEDULE": "beat_schedule",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERY_IMPORTS": "imports",
}


class _Unconfigured:
    """``Settings._live`` until the first read: any lookup runs the configure hook first.

    The hot path (``send_task`` reads ``conf[...]`` about ten times per send) then costs
    nothing extra once configured: ``Settings._live`` becomes the plain dict of values, and
    the first ``key in live`` after construction is what fires the hook.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def __contains__(self, key: object) -> bool:
        self._settings.configure()
        return key in self._settings._values

    def __getitem__(self, key: str) -> Any:
        return self._settings._values[key]


class Settings(MutableMapping[str, Any]):
    """``app.conf``: defaults overlaid with what the user set; attribute and key access.

    As in Celery, the first *read* finalizes configuration: it calls the hook given to
    :meth:`call_on_first_read` once (the app sends ``on_configure`` and ``on_after_configure``
    there), so a setting read anywhere already includes what those handlers added. Writes,
    ``in``, ``setdefault`` and :meth:`peek` do not count as reads, so configuring code and the
    library's own import-time lookups never fire the hook early.
    """

    #: How many writes so far: a cache of settings (the send path's) compares it.
    version: int

    def __init__(self, **values: Any) -> None:
        object.__setattr__(self, "_values", {})
        # What reads look in: the values themselves, or an _Unconfigured until the hook ran.
        object.__setattr__(self, "_live", self._values)
        object.__setattr__(self, "_on_first_read", None)
        object.__setattr__(self, "_configure_lock", threading.RLock())
        object.__setattr__(self, "_is_configuring", False)
        # Private copies of the defaults read so far: mutating one (``conf.beat_schedule[k] =``)
        # must not change the default every other app sees.
        object.__setattr__(self, "_defaults", {})
        object.__setattr__(self, "version", 0)
        self.update(values)

    def __getitem__(self, key: str) -> Any:
        values: dict[str, Any] = self._live
        if key in values:
            return values[key]
        # Inline for the hot path: a default read before (and not shadowed by the environment).
        defaults: dict[str, Any] = self._defaults
        if key in defaults and key not in _ENV_FALLBACK:
            return defaults[key]
        return self._fallback(key)

    def _fallback(self, key: str) -> Any:
        """Return ``key`` from the environment or the defaults (it is not set in the values)."""
        for env_name in _ENV_FALLBACK.get(key, ()):
            if os.environ.get(env_name):
                return os.environ[env_name]
        if key in SETTINGS:
            defaults: dict[str, Any] = self._defaults
            if key not in defaults:
                defaults[key] = copy.deepcopy(SETTINGS[key].default)
            return defaults[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._values[key] = value
        object.__setattr__(self, "version", self.version + 1)

    def __delitem__(self, key: str) -> None:
        del self._values[key]
        object.__setattr__(self, "version", self.version + 1)

    def __contains__(self, key: object) -> bool:
        return key in self._values or key in SETTINGS  # not a read: Celery's is lazy too

    def __iter__(self) -> Iterator[str]:
        self.configure()
        return iter({**dict.fromkeys(SETTINGS), **self._values})

    def __len__(self) -> int:
        self.configure()
        return len({**dict.fromkeys(SETTINGS), **self._values})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"no setting {name!r}; see chard.config.SETTINGS for the known ones"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return ``key``'s value, setting it to ``default`` first if unset.

        Before configuration is final this is not a read, as in Celery: ``default`` is set
        unless the user set ``key`` (a built-in default does not count yet). Afterwards it is
        the usual mapping ``setdefault``: a setting with a built-in default keeps it.
        """
        values: dict[str, Any] = self._values
        if key in values:
            return values[key]
        if self.is_configured:
            return super().setdefault(key, default)
        values[key] = default
        return default

    # -- configuration on first read -----------------------------------------------------
    def call_on_first_read(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` once, before the first setting is read (Celery's ``_load_config``).

        Reads made while ``hook`` runs see the settings as they are (they do not call it
        again); a read from another thread meanwhile waits for it to finish.
        """
        with self._configure_lock:
            object.__setattr__(self, "_on_first_read", hook)
            object.__setattr__(self, "_live", _Unconfigured(self))

    def configure(self) -> None:
        """Call the first-read hook now if it has not run yet; a no-op afterwards."""
        if self._on_first_read is None:
            return
        with self._configure_lock:
            hook: Callable[[], None] | None = self._on_first_read
            if hook is None or self._is_configuring:
                return  # another thread ran it, or this thread is running it now
            object.__setattr__(self, "_is_configuring", True)
            try:
                hook()
            finally:
                object.__setattr__(self, "_on_first_read", None)
                object.__setattr__(self, "_live", self._values)
                object.__setattr__(self, "_is_configuring", False)

    @property
    def is_configured(self) -> bool:
        """Whether the first-read hook has started (or there is none): reads are final now."""
        return self._on_first_read is None or bool(self._is_configuring)

    def peek(self, key: str, default: Any = None) -> Any:
        """Return setting ``key`` without finalizing configuration (for library code at import)."""
        if key in self._values:
            return self._values[key]
        try:
            return self._fallback(key)
        except KeyError:
            return default

    def is_set(self, key: str) -> bool:
        """Return whether ``key`` was given by the user (or the environment)."""
        self.configure()
        return key in self._values or any(os.environ.get(e) for e in _ENV_FALLBACK.get(key, ()))

    def changes(self) -> dict[str, Any]:
        """Return only what the user set, for display."""
        self.configure()
        return dict(self._values)

    def module_in_envvar(self, variable_name: str, silent: bool = False) -> str | None:
        """Return the settings module named by ``variable_name`` (``config_from_envvar``).

        Raises:
            ImproperlyConfigured: the variable is unset and not ``silent``.
        """
        module = os.environ.get(variable_name)
        if not module and not silent:
            raise ImproperlyConfigured(
                f"environment variable {variable_name!r} is not set; set it to the dotted "
                "name of a settings module, e.g. export CELERY_CONFIG_MODULE=proj.settings"
            )
        return module or None

    def load_object(self, obj: Any, namespace: str | None = None) -> None:
        """Read settings from a module, class or object (``config_from_object``).

        Args:
            obj: the object, or a dotted path to import.
            namespace: e.g. ``'CELERY'``: only ``CELERY_*`` names are read, prefix stripped
                and lowercased (``CELERY_BROKER_URL`` -> ``broker_url``), as Django users do.
        """
        source = obj if isinstance(obj, str) else None
        if isinstance(obj, str):
            try:
                obj = _import_config(obj)
            except ImportError as exc:
                raise ImproperlyConfigured(
                    f"cannot import configuration {obj!r}: {exc}; is it on sys.path?"
                ) from exc
        try:
            self._read_names(obj, namespace)
        except Exception as exc:
            # Django's settings are imported on first read: a wrong DJANGO_SETTINGS_MODULE
            # (or an error inside it) surfaces here, and is a configuration error.
            django = os.environ.get("DJANGO_SETTINGS_MODULE")
            hint = f" (DJANGO_SETTINGS_MODULE is {django!r})" if django else ""
            raise ImproperlyConfigured(
                f"cannot read configuration {source or obj!r}{hint}: {type(exc).__name__}: {exc}"
            ) from exc

    def _read_names(self, obj: Any, namespace: str | None) -> None:
        names = obj.keys() if isinstance(obj, Mapping) else dir(obj)
        get = obj.__getitem__ if isinstance(obj, Mapping) else lambda n: getattr(obj, n)
        prefix = f"{namespace}_" if namespace else None
        for name in names:
            if name.startswith("_"):
                continue
            if prefix is not None:
                if not name.startswith(prefix):
                    continue
                self[name[len(prefix) :].lower()] = get(name)
            elif name in _OLD_NAMES:
                self[_OLD_NAMES[name]] = get(name)
            elif name.islower():
                self[name] = get(name)


#: What a setting's value may be when its default does not say (None defaults).
_NUMBER = (int, float)
_ALLOWED: dict[str, tuple[type, ...]] = {
    "broker_url": (str,),
    "result_backend": (str,),
    "dashboard_token": (str,),
    "dashboard_basic_auth": (str,),
    "worker_concurrency": (int,),
    "worker_max_tasks_per_child": (int,),
    "task_default_priority": (int,),
    "task_time_limit": _NUMBER,
    "task_soft_time_limit": _NUMBER,
    "result_expires": (*_NUMBER, timedelta),
    "accept_content": (list, tuple, set, frozenset),
    "imports": (list, tuple, str),
    "include": (list, tuple, str),
}
#: Settings whose value is one of a few names.
_CHOICES = {"worker_pool": ("prefork", "threads", "solo")}


def check_settings(conf: Settings) -> None:
    """Check the value of every known setting the user gave; the first bad one is an error.

    Done when a command starts, so that ``worker_prefetch_multiplier='four'`` is one line
    naming the setting, not a traceback from deep in the worker.

    Raises:
        ImproperlyConfigured: a setting's value has the wrong type or is not one of its names.
    """
    for name, value in conf.changes().items():
        if name not in SETTINGS or value is None:
            continue
        allowed = _allowed_types(name)
        if allowed and (not isinstance(value, allowed) or _is_bool_for_number(value, allowed)):
            kinds = " or ".join(t.__name__ for t in allowed)
            raise ImproperlyConfigured(
                f"setting {name!r} is {value!r} ({type(value).__name__}); it must be {kinds} "
                f"(default {SETTINGS[name].default!r}: {SETTINGS[name].doc})"
            )
        choices = _CHOICES.get(name)
        if choices and value not in choices:
            raise ImproperlyConfigured(
                f"setting {name!r} is {value!r}; it must be one of {', '.join(choices)}"
            )


def _allowed_types(name: str) -> tuple[type, ...]:
    if name in _ALLOWED:
        return _ALLOWED[name]
    default = SETTINGS[name].default
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return _NUMBER
    if isinstance(default, str):
        return (str,)
    return ()  # dicts, lists and callables: too many valid shapes to check here


def _is_bool_for_number(value: Any, allowed: tuple[type, ...]) -> bool:
    return isinstance(value, bool) and bool not in allowed


def broker_options(conf: Settings) -> dict[str, Any]:
    """The options a broker opens with: the transport options, plus queue-level settings.

    ``task_queue_max_priority`` travels as ``queue_max_priority`` (RabbitMQ's queue argument);
    a value in the transport options wins.
    """
    options = dict(conf.broker_transport_options or {})
    if conf.task_queue_max_priority is not None:
        options.setdefault("queue_max_priority", conf.task_queue_max_priority)
    if conf.task_default_queue_type != "classic":
        options.setdefault("queue_type", conf.task_default_queue_type)
    options.setdefault("topology", topology(conf))
    if conf.chard_celery_compat:  # RabbitMQ: events on Celery's celeryev exchange too
        options.setdefault("celery_events", True)
    return options


def topology(conf: Settings) -> Topology:
    """Every queue's declaration, from ``task_queues`` and the ``task_default_*`` settings."""
    return Topology.from_settings(
        conf.task_queues,
        default_queue=conf.task_default_queue,
        default_exchange=conf.task_default_exchange,
        default_exchange_type=conf.task_default_exchange_type,
        default_routing_key=conf.task_default_routing_key,
        default_queue_type=conf.task_default_queue_type,
        create_missing=conf.task_create_missing_queues,
        missing_queue_type=conf.task_create_missing_queue_type,
        missing_exchange_type=conf.task_create_missing_queue_exchange_type,
        max_priority=conf.task_queue_max_priority,
    )


def backend_options(conf: Settings, backend_url: str, broker_url: str) -> dict[str, Any]:
    """The options a result backend opens with; ``rpc://`` also gets the broker's URL."""
    options = dict(conf.result_backend_transport_options or {})
    if backend_url.startswith("rpc:"):
        options.setdefault("broker_url", broker_url)
        options.update({k: v for k, v in broker_options(conf).items() if k not in options})
    return options


def _import_config(path: str) -> Any:
    """Import ``path`` as a module (``'proj.celeryconfig'``), else as ``module.attribute``."""
    if ":" not in path:
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path:
                raise  # the module exists and imports something missing
    return import_string(path)


def describe_settings() -> str:
    """Return every setting, its default and doc, one per line (``chard settings``)."""
    width = max(len(name) for name in SETTINGS)
    lines = [f"{n:<{width}}  {s.default!r:<20}  {s.doc}" for n, s in SETTINGS.items()]
    return "\n".join(lines)
