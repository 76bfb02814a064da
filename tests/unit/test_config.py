"""Settings: defaults, then the role's TOML table, then overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocoon.config import (
    ClientSettings,
    ConfigError,
    PeerPin,
    ProxySettings,
    WorkerSettings,
    data_dir,
    load_settings,
    split_address,
)
from cocoon.protocol.framing import DEFAULT_MAX_FRAME

KEY = "ab" * 32


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("COCOON_HOME", str(path))
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cocoon.toml"
    path.write_text(text)
    return path


def config_error(cls: type, role: str, path: Path | None, overrides: dict[str, object] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(cls, role, path, overrides or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_without_a_file(home: Path) -> None:
    settings = load_settings(ProxySettings, "proxy", None, {})
    assert settings.listen == "127.0.0.1:9300"
    assert settings.heartbeat_interval == 5.0
    assert settings.max_frame == DEFAULT_MAX_FRAME
    assert settings.client_keys == "*"
    assert settings.key_file == str(home / "proxy.key")


def test_reads_the_roles_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[proxy]
listen = "0.0.0.0:9400"
worker_keys = ["{KEY}"]
models = ["a", "b"]
heartbeat_interval = 2

[worker]
name = "gpu-1"
capacity = 8
proxies = [{{ address = "proxy.example:9400", public_key = "{KEY}" }}]

[client]
listen = "127.0.0.1:8080"
proxy = {{ address = "localhost:9400", public_key = "{KEY}" }}
""",
    )
    proxy = load_settings(ProxySettings, "proxy", path, {})
    assert proxy.listen == "0.0.0.0:9400"
    assert proxy.worker_keys == [KEY]
    assert proxy.models == ["a", "b"]
    assert proxy.heartbeat_interval == 2.0
    worker = load_settings(WorkerSettings, "worker", path, {})
    assert worker.name == "gpu-1"
    assert worker.capacity == 8
    assert worker.proxies == [PeerPin(address="proxy.example:9400", public_key=KEY)]
    client = load_settings(ClientSettings, "client", path, {})
    assert client.listen == "127.0.0.1:8080"
    assert client.proxy == PeerPin(address="localhost:9400", public_key=KEY)


def test_missing_table_means_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[proxy]\nlisten = "0.0.0.0:1"\n')
    worker = load_settings(WorkerSettings, "worker", path, {})
    assert worker.capacity == 2
    assert worker.name == "worker"


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[worker]\ncapacity = 8\nname = "from-file"\n')
    worker = load_settings(WorkerSettings, "worker", path, {"capacity": 3})
    assert worker.capacity == 3
    assert worker.name == "from-file"


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "[worker]\ncapacity = 8\n")
    worker = load_settings(WorkerSettings, "worker", path, {"capacity": None, "name": None, "model": "x"})
    assert worker.capacity == 8
    assert worker.name == "worker"
    assert worker.model == "x"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("capacity = 0", "capacity"),
        ('capacity = "two"', "capacity"),
        ('engine = "vllm"', "engine"),
        ('name = "has space"', "name"),
        ("dead_after = 0", "dead_after"),
        ("max_frame = 1", "max_frame"),
        ('log_level = "loud"', "log_level"),
        ('proxies = [{ address = "no-port", public_key = "' + KEY + '" }]', "address"),
        ('proxies = [{ address = "h:1", public_key = "abc" }]', "public_key"),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, field: str) -> None:
    message = config_error(WorkerSettings, "worker", write(tmp_path, f"[worker]\n{text}\n"))
    assert message.startswith("invalid worker setting:")
    assert field in message


def test_invalid_override(tmp_path: Path) -> None:
    message = config_error(ProxySettings, "proxy", None, {"listen": "nowhere"})
    assert "listen" in message


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    message = config_error(ProxySettings, "proxy", write(tmp_path, "[proxy]\nlisten_port = 9300\n"))
    assert "listen_port" in message


def test_unknown_keys_in_a_peer_pin_are_rejected(tmp_path: Path) -> None:
    text = f'[client]\nproxy = {{ address = "h:1", public_key = "{KEY}", extra = 1 }}\n'
    assert "extra" in config_error(ClientSettings, "client", write(tmp_path, text))


def test_role_that_is_not_a_table(tmp_path: Path) -> None:
    message = config_error(ProxySettings, "proxy", write(tmp_path, 'proxy = "yes"\n'))
    assert "[proxy] must be a table" in message


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[proxy\nlisten = \n")
    message = config_error(ProxySettings, "proxy", path)
    assert "is not valid TOML" in message
    assert str(path) in message


def test_a_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cocoon.toml"
    path.write_bytes(b"\xff\xfe[proxy]\n")
    assert config_error(ProxySettings, "proxy", path) == f"config {path} is not UTF-8 text (byte 0)"


def test_a_config_too_large_is_not_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "cocoon.toml"
    path.write_text("# " + "x" * (2 * 1024 * 1024) + "\n")
    assert config_error(ProxySettings, "proxy", path) == f"config {path} is larger than 1024 KiB"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    message = config_error(ProxySettings, "proxy", path)
    assert message.startswith(f"cannot read config {path}")


def test_key_file_defaults_under_cocoon_home(home: Path) -> None:
    for cls, role in ((ProxySettings, "proxy"), (WorkerSettings, "worker"), (ClientSettings, "client")):
        assert load_settings(cls, role, None, {}).key_file == str(home / f"{role}.key")


def test_explicit_key_file_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, '[worker]\nkey_file = "/etc/cocoon/w.key"\n')
    assert load_settings(WorkerSettings, "worker", path, {}).key_file == "/etc/cocoon/w.key"


def test_data_dir_falls_back_to_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COCOON_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "cocoon"


def test_data_dir_without_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("COCOON_HOME")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_dir() == tmp_path / ".local" / "share" / "cocoon"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9300", ("127.0.0.1", 9300)),
        ("proxy.example.com:443", ("proxy.example.com", 443)),
        ("[::1]:8000", ("::1", 8000)),
        ("host:0", ("host", 0)),
        ("host:65535", ("host", 65535)),
    ],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


def test_split_address_port_out_of_range() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        split_address("host:65536")


def test_the_worker_command_takes_its_queue_from_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cocoon.cli import app

    started: list[WorkerSettings] = []
    monkeypatch.setattr("cocoon.run.run_worker", started.append)
    monkeypatch.setattr("cocoon.run.setup_logging", lambda *args, **kwargs: None)
    result = CliRunner().invoke(app, ["worker", "--engine", "benchmark", "--queue", "3", "--queue-timeout", "0.5"])
    assert result.exit_code == 0, result.output
    assert [(s.queue, s.queue_timeout) for s in started] == [(3, 0.5)]
    result = CliRunner().invoke(app, ["worker", "--engine", "benchmark", "--queue", "-1"])
    assert result.exit_code != 0 and "queue" in result.output and not started[1:]


def test_proxy_flags_of_the_client_replace_the_proxies_of_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cocoon.cli import app

    key = "ab" * 32
    config = write(
        tmp_path,
        f'[client]\nproxy = {{ address = "10.0.0.1:9300", public_key = "{key}" }}\n'
        f'proxies = [{{ address = "10.0.0.2:9300", public_key = "{key}" }}]\n',
    )
    started: list[ClientSettings] = []
    monkeypatch.setattr("cocoon.run.run_client", started.append)
    monkeypatch.setattr("cocoon.run.setup_logging", lambda *args, **kwargs: None)
    result = CliRunner().invoke(app, ["client", "--config", str(config), "--proxy", f"127.0.0.1:9300={key}"])
    assert result.exit_code == 0, result.output
    (settings,) = started
    assert settings.proxy is not None and settings.proxy.address == "127.0.0.1:9300"
    assert settings.proxies == []


@pytest.mark.parametrize(
    ("cls", "role", "text", "why"),
    [
        (ProxySettings, "proxy", "heartbeat_interval = 5\ndead_after = 5\n", "dead_after must be longer"),
        (WorkerSettings, "worker", "reconnect_min = 20\nreconnect_max = 10\n", "reconnect_min must not be longer"),
    ],
)
def test_settings_that_contradict_each_other_are_refused(
    tmp_path: Path, cls: type[ProxySettings] | type[WorkerSettings], role: str, text: str, why: str
) -> None:
    assert why in config_error(cls, role, write(tmp_path, f"[{role}]\n{text}"))
