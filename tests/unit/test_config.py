"""Settings: Celery's names and defaults, every way Celery projects load them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from chard import Celery
from chard.config import SETTINGS, Settings, check_settings, describe_settings
from chard.exceptions import ImproperlyConfigured
from tests.unit.conftest import WriteModules

pytestmark = pytest.mark.usefixtures("no_broker_env")


# -- defaults and access ------------------------------------------------------------------


def test_defaults() -> None:
    conf = Settings()

    assert conf.task_acks_late is True  # chard's at-least-once default (Celery: False)
    assert conf.result_expires == 86400
    assert conf.task_default_queue == "celery"
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.broker_url is None
    assert conf.result_backend is None
    assert conf.task_always_eager is False
    assert conf.timezone is None
    assert conf.enable_utc is True


def test_attribute_and_key_access_are_the_same() -> None:
    conf = Settings(result_expires=60)

    conf.task_default_queue = "work"
    conf["task_track_started"] = True

    assert conf["task_default_queue"] == conf.task_default_queue == "work"
    assert conf.task_track_started is conf["task_track_started"] is True
    assert conf.result_expires == conf["result_expires"] == 60


def test_update_sets_many() -> None:
    conf = Settings()

    conf.update(task_serializer="msgpack", result_expires=10)
    conf.update({"worker_concurrency": 3})

    assert (conf.task_serializer, conf.result_expires, conf.worker_concurrency) == (
        "msgpack",
        10,
        3,
    )
    assert conf.changes() == {
        "task_serializer": "msgpack",
        "result_expires": 10,
        "worker_concurrency": 3,
    }


def test_unknown_attribute_names_the_setting_and_where_to_look() -> None:
    conf = Settings()

    with pytest.raises(AttributeError) as info:
        _ = conf.task_defualt_queue

    assert str(info.value) == (
        "no setting 'task_defualt_queue'; see chard.config.SETTINGS for the known ones"
    )
    assert not hasattr(conf, "nope")


def test_unknown_key_is_a_key_error_and_get_returns_the_default() -> None:
    conf = Settings()

    with pytest.raises(KeyError):
        conf["nope"]
    assert conf.get("nope", 5) == 5


def test_user_keys_are_kept_and_deletable() -> None:
    conf = Settings(my_custom_flag=1)

    assert conf.my_custom_flag == 1
    assert "my_custom_flag" in conf
    del conf["my_custom_flag"]
    assert "my_custom_flag" not in conf


def test_mapping_covers_every_known_setting_plus_user_keys() -> None:
    conf = Settings(extra=1)

    assert set(conf) == {*SETTINGS, "extra"}
    assert len(conf) == len(SETTINGS) + 1


def test_is_set_tells_given_from_default() -> None:
    conf = Settings(result_expires=5)

    assert conf.is_set("result_expires")
    assert not conf.is_set("task_default_queue")


def test_mutable_defaults_are_not_shared_between_apps() -> None:
    # Regression: defaults were returned by reference, so one app's
    # ``conf.beat_schedule['x'] = ...`` changed the schedule of every other app.
    first, second = Settings(), Settings()

    first.beat_schedule["every-minute"] = {"task": "tasks.tick", "schedule": 60}
    first.accept_content.append("pickle")

    assert second.beat_schedule == {}
    assert second.accept_content == ["json"]
    assert SETTINGS["beat_schedule"].default == {}
    # The change sticks on the settings it was made on, as in Celery.
    assert "every-minute" in first.beat_schedule
    assert first.accept_content == ["json", "pickle"]


# -- config_from_object -------------------------------------------------------------------


def test_config_from_a_module_object(write_modules: WriteModules) -> None:
    write_modules(
        {
            "celeryconfig.py": """
                broker_url = "memory://"
                result_expires = 30
                _private = "ignored"
                NotASetting = "ignored"
            """
        }
    )
    import celeryconfig  # type: ignore[import-not-found]

    app = Celery("t")
    app.config_from_object(celeryconfig)

    assert app.conf.broker_url == "memory://"
    assert app.conf.result_expires == 30
    assert "_private" not in app.conf
    assert "NotASetting" not in app.conf


def test_config_from_a_dotted_module_path(write_modules: WriteModules) -> None:
    # Regression: 'proj.celeryconfig' was resolved as attribute 'celeryconfig' of 'proj',
    # which fails unless proj/__init__.py happens to import the submodule.
    write_modules({"proj/__init__.py": "", "proj/celeryconfig.py": "task_default_queue = 'q'\n"})

    app = Celery("t")
    app.config_from_object("proj.celeryconfig")

    assert app.conf.task_default_queue == "q"


def test_config_from_a_module_attribute_path(write_modules: WriteModules) -> None:
    write_modules(
        {
            "settings_mod.py": """
                class Config:
                    task_default_queue = "from-class"
            """
        }
    )

    dotted, colon = Celery("a"), Celery("b")
    dotted.config_from_object("settings_mod.Config")
    colon.config_from_object("settings_mod:Config")

    assert dotted.conf.task_default_queue == colon.conf.task_default_queue == "from-class"


def test_config_from_a_class() -> None:
    class Config:
        task_default_queue = "cls"
        result_expires = 5

    app = Celery("t")
    app.config_from_object(Config)

    assert (app.conf.task_default_queue, app.conf.result_expires) == ("cls", 5)


def test_config_from_a_dict() -> None:
    app = Celery("t")

    app.config_from_object({"task_default_queue": "d", "timezone": "Europe/Moscow"})

    assert app.conf.task_default_queue == "d"
    assert app.conf.timezone == "Europe/Moscow"


def test_config_source_in_the_constructor() -> None:
    app = Celery("t", config_source={"task_default_queue": "ctor"})

    assert app.conf.task_default_queue == "ctor"


def test_config_from_an_unimportable_path_names_it(write_modules: WriteModules) -> None:
    write_modules({})

    with pytest.raises(ImproperlyConfigured, match=r"cannot import configuration 'no_such\.mod'"):
        Celery("t").config_from_object("no_such.mod")
    Celery("t").config_from_object("no_such.mod", silent=True)  # silent: no error


def test_an_import_error_inside_the_config_module_is_not_masked(
    write_modules: WriteModules,
) -> None:
    write_modules({"brokenconf.py": "import not_installed_dependency\n"})

    with pytest.raises(ImproperlyConfigured, match="not_installed_dependency"):
        Celery("t").config_from_object("brokenconf")


def test_namespace_strips_the_prefix() -> None:
    django_settings = {
        "CELERY_BROKER_URL": "memory://",
        "CELERY_TASK_ALWAYS_EAGER": True,
        "CELERY_RESULT_BACKEND": "memory://",
        "DEBUG": True,
        "INSTALLED_APPS": ["x"],
        "task_default_queue": "not-namespaced",
    }
    app = Celery("t")

    app.config_from_object(django_settings, namespace="CELERY")

    assert app.conf.broker_url == "memory://"
    assert app.conf.task_always_eager is True
    assert app.conf.result_backend == "memory://"
    assert app.conf.task_default_queue == "celery"  # only CELERY_* names are read
    assert "debug" not in app.conf
    assert "installed_apps" not in app.conf


def test_namespace_from_a_settings_module(write_modules: WriteModules) -> None:
    write_modules({"djsettings.py": "CELERY_TASK_DEFAULT_QUEUE = 'django'\nDEBUG = True\n"})

    app = Celery("t", config_source="djsettings", namespace="CELERY")

    assert app.conf.task_default_queue == "django"


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [
        ("BROKER_URL", "broker_url", "memory://"),
        ("CELERY_RESULT_BACKEND", "result_backend", "memory://"),
        ("CELERY_ALWAYS_EAGER", "task_always_eager", True),
        ("CELERY_TASK_SERIALIZER", "task_serializer", "msgpack"),
        ("CELERY_ACCEPT_CONTENT", "accept_content", ["json", "msgpack"]),
        ("CELERY_ROUTES", "task_routes", {"a": "b"}),
        ("CELERYBEAT_SCHEDULE", "beat_schedule", {"x": {}}),
        ("CELERY_TIMEZONE", "timezone", "UTC"),
        ("CELERY_IMPORTS", "imports", ["proj.tasks"]),
        ("CELERY_TASK_RESULT_EXPIRES", "result_expires", 10),
    ],
)
def test_celery_3_names_map_to_the_new_ones(old: str, new: str, value: object) -> None:
    app = Celery("t")

    app.config_from_object({old: value})

    assert app.conf[new] == value


# -- config_from_envvar -------------------------------------------------------------------


def test_config_from_envvar(write_modules: WriteModules, monkeypatch: pytest.MonkeyPatch) -> None:
    write_modules({"envconf.py": "task_default_queue = 'env'\n"})
    monkeypatch.setenv("CELERY_CONFIG_MODULE", "envconf")

    app = Celery("t")
    app.config_from_envvar("CELERY_CONFIG_MODULE")

    assert app.conf.task_default_queue == "env"


def test_config_from_unset_envvar_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_PROJ_SETTINGS", raising=False)
    app = Celery("t")

    with pytest.raises(ImproperlyConfigured, match="'MY_PROJ_SETTINGS' is not set"):
        app.config_from_envvar("MY_PROJ_SETTINGS")
    app.config_from_envvar("MY_PROJ_SETTINGS", silent=True)  # silent: no error


# -- environment fallback -----------------------------------------------------------------


@pytest.mark.parametrize("variable", ["CELERY_BROKER_URL", "CHARD_BROKER_URL"])
def test_broker_url_falls_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "memory://from-env")

    app = Celery("t")

    assert app.conf.broker_url == "memory://from-env"
    assert app.broker_url == "memory://from-env"
    assert app.conf.is_set("broker_url")
    assert not app.uses_embedded_default


def test_chard_variable_wins_over_celerys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://celery")
    monkeypatch.setenv("CHARD_BROKER_URL", "memory://chard")

    assert Settings().broker_url == "memory://chard"


def test_an_explicit_broker_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://from-env")

    assert Celery("t", broker="memory://given").conf.broker_url == "memory://given"


def test_result_backend_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "memory://")

    app = Celery("t", broker="memory://")

    assert app.backend_url == "memory://"


def test_an_empty_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "")

    assert Settings().broker_url is None
    assert not Settings().is_set("broker_url")


# -- describe_settings --------------------------------------------------------------------


def test_describe_settings_lists_every_setting_with_default_and_doc() -> None:
    lines = describe_settings().splitlines()

    assert len(lines) == len(SETTINGS)
    for line, (name, setting) in zip(lines, SETTINGS.items(), strict=True):
        assert line.split()[0] == name
        assert repr(setting.default) in line
        assert setting.doc in line


# -- issue 14: a bad setting value is one clear error, found when a command starts -------------
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"worker_prefetch_multiplier": "four"},
         "setting 'worker_prefetch_multiplier' is 'four' (str); it must be int"),
        ({"task_acks_late": "yes"}, "setting 'task_acks_late' is 'yes' (str); it must be bool"),
        ({"worker_concurrency": 2.5},
         "setting 'worker_concurrency' is 2.5 (float); it must be int"),
        ({"broker_connection_max_retries": True},
         "setting 'broker_connection_max_retries' is True (bool); it must be int"),
        ({"worker_pool": "gevent"},
         "setting 'worker_pool' is 'gevent'; it must be one of prefork, threads, solo"),
        ({"result_expires": "1h"},
         "setting 'result_expires' is '1h' (str); it must be int or float"),
    ],
)  # fmt: skip
def test_check_settings_names_the_bad_setting_and_what_it_must_be(
    settings: dict[str, Any], expected: str
) -> None:
    conf = Settings(**settings)

    with pytest.raises(ImproperlyConfigured) as info:
        check_settings(conf)

    assert expected in str(info.value)


def test_check_settings_accepts_good_values_and_leaves_unknown_ones_alone() -> None:
    conf = Settings(
        worker_prefetch_multiplier=1,
        task_time_limit=2.5,
        result_expires=timedelta(hours=1),
        timezone="Europe/Moscow",
        worker_pool="threads",
        accept_content=["json", "msgpack"],
        task_routes={"proj.*": "q"},
        my_own_setting=object(),
        task_default_priority=None,
    )

    check_settings(conf)  # no error
