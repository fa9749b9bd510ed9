"""Settings: the shipped flowfuse.toml, --config / FLOWFUSE_CONFIG, FLOWFUSE_<SECTION>_<KEY>, and the
start-up errors for a bad file or variable."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import tomllib

import httpx
import pytest

from appliance.settings import SECTIONS, Settings, SettingsError, load, render_toml
from conftest import FAST_ENV, ROOT, flowfuse, free_port

SHIPPED = ROOT / "flowfuse.toml"


def values(settings: Settings) -> dict:
    return {section: dataclasses.asdict(getattr(settings, section)) for section in SECTIONS}


def test_shipped_file_lists_every_setting_with_its_default_and_a_comment():
    text = SHIPPED.read_text()
    assert text == render_toml(), "flowfuse.toml is out of date: write appliance.settings.render_toml() to it"

    defaults = Settings()
    parsed = tomllib.loads(text)
    assert list(parsed) == SECTIONS
    assert parsed == values(defaults)

    lines = text.splitlines()
    for section in SECTIONS:
        for key in parsed[section]:
            at = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
            comment = lines[at - 1]
            assert comment.startswith("# ") and len(comment) > 10, f"{section}.{key} has no comment"

    loaded = load(SHIPPED, env={})
    assert values(loaded) == values(defaults)
    assert loaded.source == str(SHIPPED)


def test_without_any_file_the_defaults_apply_and_a_local_file_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bare = load(env={})
    assert bare.source is None
    assert values(bare) == values(Settings())

    (tmp_path / "flowfuse.toml").write_text('[server]\nport = 9001\n\n[worker]\nthreads = 3\n')
    local = load(env={})
    assert local.server.port == 9001
    assert local.worker.threads == 3
    assert local.server.host == "127.0.0.1"  # what the file leaves out keeps its default
    assert local.source == "flowfuse.toml"


def test_file_then_environment_then_command_line_options(tmp_path):
    config = tmp_path / "site.toml"
    config.write_text('[server]\nport = 9001\nhost = "0.0.0.0"\n\n[engine]\ninline_wait_max_s = 2\n')
    env = {"FLOWFUSE_SERVER_PORT": "9002", "FLOWFUSE_SERVER_SYNC_TIMEOUT_S": "2.5", "FLOWFUSE_WORKER_THREADS": "4",
           "FLOWFUSE_LOGGING_LEVEL": "debug", "FLOWFUSE_MASTER_KEY": "not a setting", "PATH": "/bin"}
    s = load(config, env=env)
    assert s.server.port == 9002
    assert s.server.host == "0.0.0.0"
    assert s.server.sync_timeout_s == 2.5
    assert s.worker.threads == 4
    assert s.engine.inline_wait_max_s == 2.0 and isinstance(s.engine.inline_wait_max_s, float)
    assert s.logging.level == "debug"

    flagged = load(config, env=env, overrides={"server.port": 9003, "storage.data_dir": str(tmp_path / "d")})
    assert flagged.server.port == 9003
    assert flagged.data_dir == tmp_path / "d"

    # FLOWFUSE_CONFIG names the file; an explicit path wins over it
    other = tmp_path / "other.toml"
    other.write_text("[server]\nport = 7001\n")
    assert load(env={"FLOWFUSE_CONFIG": str(other)}).server.port == 7001
    assert load(config, env={"FLOWFUSE_CONFIG": str(other)}).server.port == 9001


def test_config_option_and_flowfuse_config_choose_the_file_the_cli_uses(tmp_path):
    by_env, by_option = tmp_path / "by-env", tmp_path / "by-option"
    env_file, option_file = tmp_path / "env.toml", tmp_path / "option.toml"
    env_file.write_text(f'[storage]\ndata_dir = "{by_env}"\n')
    option_file.write_text(f'[storage]\ndata_dir = "{by_option}"\n')

    result = flowfuse("init", env={"FLOWFUSE_CONFIG": str(env_file)})
    assert result.returncode == 0, result.stderr
    assert (by_env / "flowfuse.db").is_file()

    result = flowfuse("--config", str(option_file), "init", env={"FLOWFUSE_CONFIG": str(env_file)})
    assert result.returncode == 0, result.stderr
    assert (by_option / "flowfuse.db").is_file()

    missing = flowfuse("--config", str(tmp_path / "absent.toml"), "init")
    assert missing.returncode == 1
    assert "absent.toml" in missing.stderr and "does not exist" in missing.stderr


def test_environment_variable_sets_the_port_the_server_listens_on(tmp_path):
    data = tmp_path / "data"
    assert flowfuse("init", "--data-dir", str(data)).returncode == 0
    port = free_port()
    log = (tmp_path / "web.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "web", "--data-dir", str(data)], cwd=ROOT,
                            env={**os.environ, **FAST_ENV, "FLOWFUSE_SERVER_PORT": str(port)},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "web.log").read_text()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the web server never listened on FLOWFUSE_SERVER_PORT"
                time.sleep(0.1)
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("content, fragments", [
    ('[server]\nprot = 8080\n', ["server.prot"]),
    ('[server]\nport = "8080"\n', ["server.port", "int", "'8080'"]),
    ('[worker]\nthreads = 2.5\n', ["worker.threads", "int"]),
    ('[srever]\nport = 8080\n', ["[srever]"]),
    ('[storage]\nsynchronous = "OFF"\n', ["storage.synchronous"]),
    ('[engine]\ncheckpoint = "sometimes"\n', ["engine.checkpoint"]),
    ('[server]\nport = 8080\nport = 8081\n', ["not valid TOML"]),
    ('port = 8080\n', ["port", "[section]"]),
])
def test_a_bad_file_is_refused_naming_the_key_and_the_file(tmp_path, content, fragments):
    bad = tmp_path / "bad.toml"
    bad.write_text(content)
    with pytest.raises(SettingsError) as caught:
        load(bad, env={})
    message = str(caught.value)
    assert str(bad) in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_bad_file_stops_start_up(tmp_path):
    data = tmp_path / "data"
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[storage]\ndata_dir = "x"\nbusy_timeout = 100\n')
    result = flowfuse("--config", str(unknown), "init", "--data-dir", str(data))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert "storage.busy_timeout" in result.stderr and str(unknown) in result.stderr
    assert not data.exists()

    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('[server]\nmax_body_bytes = "1 MB"\n')
    started = flowfuse("--config", str(wrong_type), "serve", "--data-dir", str(data), "--port", str(free_port()))
    assert started.returncode == 1
    assert "server.max_body_bytes" in started.stderr and str(wrong_type) in started.stderr
    assert "Traceback" not in started.stderr
    assert not data.exists()


def test_a_bad_environment_variable_is_refused_naming_the_variable(tmp_path):
    result = flowfuse("init", "--data-dir", str(tmp_path / "data"), env={"FLOWFUSE_SERVER_PORT": "eighty"})
    assert result.returncode == 1
    assert "FLOWFUSE_SERVER_PORT" in result.stderr and "'eighty'" in result.stderr
    assert not (tmp_path / "data").exists()

    # a value of the right type but out of range names the variable, not the file that was also read
    out_of_range = flowfuse("init", "--data-dir", str(tmp_path / "data"), env={"FLOWFUSE_SERVER_PORT": "70000"})
    assert out_of_range.returncode == 1
    assert "FLOWFUSE_SERVER_PORT" in out_of_range.stderr, out_of_range.stderr

    cases = {"FLOWFUSE_WORKER_THREDS": "4", "FLOWFUSE_WORKER_HEARTBEAT_S": "often",
             "FLOWFUSE_LOGGING_LEVEL": "LOUD", "FLOWFUSE_ENGINE_CHECKPOINT": "never"}
    for name, value in cases.items():
        with pytest.raises(SettingsError) as caught:
            load(SHIPPED, env={name: value})
        assert name in str(caught.value), str(caught.value)
        assert str(SHIPPED) not in str(caught.value)

    with pytest.raises(SettingsError) as caught:
        load(SHIPPED, env={}, overrides={"server.port": 0})
    assert "--port" in str(caught.value)
