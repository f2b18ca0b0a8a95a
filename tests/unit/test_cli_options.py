"""Every option of every `preload` command documents itself: help, default and env twin."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pytest

from agent import log
from agent.cli import check_endpoint, cli, main
from agent.errors import ExitCode, UsageError


def commands() -> list[tuple[str, click.Command]]:
    """The root command and each subcommand, with their names."""
    assert isinstance(cli, click.Group)
    return [("preload", cli), *((f"preload {name}", cmd) for name, cmd in cli.commands.items())]


@pytest.mark.parametrize(("name", "command"), commands(), ids=[name for name, _ in commands()])
def test_every_option_has_help_default_and_env_twin(name: str, command: click.Command) -> None:
    """Each option shows help, an env var and a default (or says it is required) in --help."""
    ctx = click.Context(command, info_name=name, **command.context_settings)
    problems = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden or param.is_eager:
            continue  # --help and --version are click's own
        record = param.get_help_record(ctx)
        text = record[1] if record else ""
        if not param.help or not param.envvar or "env var:" not in text:
            problems.append(f"{param.opts[0]}: help or env var missing: {text!r}")
        elif "default:" not in text and "required" not in text:
            problems.append(f"{param.opts[0]}: no default shown: {text!r}")
    assert not problems, problems


def test_repeatable_options_take_whitespace_separated_env_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """PRELOAD_INCLUDE/EXCLUDE/SOURCE hold several values separated by whitespace, as the README says."""
    monkeypatch.setenv("PRELOAD_INCLUDE", "config.json  *.safetensors\ttokenizer*")
    monkeypatch.setenv("PRELOAD_EXCLUDE", "original/")
    monkeypatch.setenv("PRELOAD_SOURCE", "/nfs/models hf")
    ctx = cli.make_context("preload", ["--model", "a/b", "--dest", "/x"], resilient_parsing=True)
    assert ctx.params["include"] == ("config.json", "*.safetensors", "tokenizer*")
    assert ctx.params["exclude"] == ("original/",)
    assert ctx.params["sources"] == ("/nfs/models", "hf")


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({}, "https://huggingface.co"),
        ({"HF_ENDPOINT": "http://mirror:8080"}, "http://mirror:8080"),
        ({"HF_ENDPOINT": "http://mirror:8080", "PRELOAD_ENDPOINT": "https://twin"}, "https://twin"),
    ],
)
def test_endpoint_twin_is_preload_endpoint_then_hf_endpoint(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], want: str
) -> None:
    """--endpoint comes from PRELOAD_ENDPOINT, else HF_ENDPOINT, else the public hub."""
    for name in ("PRELOAD_ENDPOINT", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = cli.make_context("preload", ["--model", "a/b", "--dest", "/x"], resilient_parsing=True)
    assert ctx.params["endpoint"] == want


@pytest.mark.parametrize(
    "url", ["ftp://x", "http://", "garbage", "http://h:99999", "http://h:port", "https://:443/", "//host"]
)
def test_invalid_endpoints_are_usage_errors(url: str) -> None:
    """Anything but http(s)://HOST[:PORT][/PATH] is refused as a usage error."""
    with pytest.raises(UsageError, match="invalid endpoint"):
        check_endpoint(url)


def test_valid_endpoints_pass_without_trailing_slash() -> None:
    """Hosts, ports, IPv6 literals and path prefixes are accepted."""
    for url in (
        "https://huggingface.co/",
        "http://127.0.0.1:8080",
        "http://[::1]:9/hub",
        "https://m.local/p/",
    ):
        assert check_endpoint(url) == url.rstrip("/")


def test_demo_without_the_dev_hub_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The container image leaves agent/devhub out: `preload demo` says so and exits 2, no traceback."""
    monkeypatch.setitem(sys.modules, "agent.devhub.demo", None)  # import fails as if absent
    monkeypatch.setattr(log, "configure", lambda _format: None)  # keep logging off capsys' stream
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--dest", str(tmp_path / "demo")])
    assert exited.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith("preload: the demo hub is not installed in this image")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "demo").exists()
