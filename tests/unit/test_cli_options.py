"""Every option of every `preload` command documents itself: help, default and env twin."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pytest

from agent import log
from agent.cli import check_endpoint, cli, main
from agent.cli.options import Duration
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
        elif "default: (" in text:
            problems.append(f"{param.opts[0]}: default shown in parentheses, unlike the others: {text!r}")
        if isinstance(param.type, Duration) and "duration" not in (param.help or ""):
            problems.append(f"{param.opts[0]}: takes a duration but its help does not say so")
    assert not problems, problems


@pytest.mark.parametrize(("name", "command"), commands(), ids=[name for name, _ in commands()])
def test_env_twins_follow_one_rule(name: str, command: click.Command) -> None:
    """PRELOAD_<OPTION> for every command, PRELOAD_DEMO_<OPTION> for the demo (never PRELOAD_DEST)."""
    prefix = "PRELOAD_DEMO_" if name == "preload demo" else "PRELOAD_"
    for param in command.params:
        if not isinstance(param, click.Option) or param.is_eager:
            continue
        envvar = param.envvar if isinstance(param.envvar, str) else param.envvar[0]
        assert envvar == prefix + param.opts[0].removeprefix("--").replace("-", "_").upper()


def test_former_env_names_still_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """PRELOAD_VERIFY_DEEP/_JSON and PRELOAD_STATUS_JSON are still read, the new names first."""
    monkeypatch.setenv("PRELOAD_VERIFY_DEEP", "1")
    monkeypatch.setenv("PRELOAD_STATUS_JSON", "true")
    verify = cli.commands["verify"].make_context("verify", ["--model", "a/b", "--dest", str(tmp_path)])
    assert verify.params["deep"] is True and verify.params["as_json"] is False
    status = cli.commands["status"].make_context("status", ["--dest", str(tmp_path)])
    assert status.params["as_json"] is True
    monkeypatch.setenv("PRELOAD_DEEP", "0")
    verify = cli.commands["verify"].make_context("verify", ["--model", "a/b", "--dest", str(tmp_path)])
    assert verify.params["deep"] is False


def _exit(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(log, "configure", lambda _format: None)  # keep logging off capsys' stream
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return int(exited.value.code or 0)


def test_root_options_before_a_subcommand_apply_to_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`preload --dest D status` is `preload status --dest D`; a bad root endpoint fails verify (2)."""
    assert _exit(["--dest", str(tmp_path), "status", "--json"], monkeypatch) == 0
    assert capsys.readouterr().out.strip() == "[]"
    bad = ["--endpoint", "ftp://bad", "verify", "--model", "a/b", "--dest", str(tmp_path)]
    assert _exit(bad, monkeypatch) == ExitCode.USAGE
    group = cli.make_context(
        "preload", ["--endpoint", "http://m:1", "--source", "/s", "--max-workers", "3", "x"]
    )
    assert isinstance(cli, click.Group)
    _, _, args = cli.resolve_command(group, ["verify", "--model", "a/b"])
    assert args == ["--source", "/s", "--endpoint", "http://m:1", "--max-workers", "3", "--model", "a/b"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--model", "a/b", "gc", "--keep-free", "1"], "--model"),
        (["--timeout", "5s", "status"], "--timeout"),
        (["--include", "*.json", "verify", "--model", "a/b"], "--include"),
        (["--endpoint", "http://a", "verify", "--model", "a/b", "--endpoint", "http://b"], "--endpoint"),
    ],
)
def test_root_options_a_subcommand_cannot_take_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    named: str,
) -> None:
    """Never silently dropped: exit 2 and an error line that names the option and the subcommand."""
    assert _exit([*argv, "--dest", str(tmp_path)], monkeypatch) == ExitCode.USAGE
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and named in err[0] and "'" in err[0], err


def test_env_twins_of_root_options_are_not_errors_before_a_subcommand(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A pod sets PRELOAD_MODEL/PRELOAD_TIMEOUT/... for every container: `status` still runs."""
    for name, value in {"PRELOAD_MODEL": "a/b", "PRELOAD_TIMEOUT": "5s", "PRELOAD_INCLUDE": "*"}.items():
        monkeypatch.setenv(name, value)
    assert _exit(["status", "--dest", str(tmp_path), "--json"], monkeypatch) == 0


def test_the_agent_takes_the_transfer_options_from_the_root() -> None:
    """Documented: the agent's preloads use the root's --endpoint, --max-workers, ... (not passed on)."""
    argv = ["--endpoint", "http://m:1", "--max-workers", "3", "--chunk-size", "1GB", "--drop-cache", "x"]
    group = cli.make_context("preload", argv)
    assert isinstance(cli, click.Group)
    _, _, args = cli.resolve_command(group, ["agent", "--config", "c.yaml"])
    assert args == ["--config", "c.yaml"] and group.params["chunk_size"] == 10**9


COMMAND_ARGS = {
    "": [],
    "verify": ["--model", "a/b"],
    "status": [],
    "wait": ["--model", "a/b"],
    "gc": ["--keep-free", "1"],
    "agent": ["--config", "c.yaml"],
    "demo": [],
}


@pytest.mark.parametrize("command", COMMAND_ARGS, ids=[c or "preload" for c in COMMAND_ARGS])
def test_every_command_refuses_a_dest_that_is_a_file_the_same_way(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    """Exit 2 and one message for all (verify used to say "no marker" with exit 8)."""
    afile = tmp_path / "file"
    afile.write_text("x")
    argv = [*([command] if command else []), *COMMAND_ARGS[command], "--dest", str(afile)]
    if not command:
        argv += ["--model", "a/b"]
    assert _exit(argv, monkeypatch) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"Error: Invalid value for '--dest': {afile} exists and is not a directory" in err, err


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1TiB", 1 << 40),
        ("1GB", 10**9),
        ("1.5GiB", 3 << 29),
        ("1T", 1 << 40),
        ("200Gi", 200 << 30),
        ("42", 42),
    ],
)
def test_sizes_are_read_as_people_type_them(tmp_path: Path, text: str, want: int) -> None:
    """gc --keep-free-bytes and --chunk-size take decimal and binary units (agent.units.parse_size)."""
    gc = cli.commands["gc"].make_context("gc", ["--dest", str(tmp_path), "--keep-free-bytes", text])
    assert gc.params["keep_free_bytes"] == want
    root = cli.make_context("preload", ["--chunk-size", text, "x"])
    assert root.params["chunk_size"] == want


@pytest.mark.parametrize(("text", "want"), [("20%", 20.0), ("20", 20.0), ("0.5 %", 0.5), ("100%", 100.0)])
def test_keep_free_takes_a_percentage(tmp_path: Path, text: str, want: float) -> None:
    """gc --keep-free 20% (was: "not a valid float range"); its help says it is a percentage."""
    gc = cli.commands["gc"].make_context("gc", ["--dest", str(tmp_path), "--keep-free", text])
    assert gc.params["keep_free"] == want
    option = next(p for p in cli.commands["gc"].params if p.name == "keep_free")
    assert "percentage" in (option.help or "")


@pytest.mark.parametrize(("option", "text"), [("--keep-free", "120%"), ("--keep-free-bytes", "1XB")])
def test_bad_sizes_and_percentages_are_one_line_usage_errors(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    option: str,
    text: str,
) -> None:
    """Exit 2, with the value and an example in the error line."""
    assert _exit(["gc", "--dest", str(tmp_path), option, text], monkeypatch) == ExitCode.USAGE
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and text in err[0] and "e.g." in err[0], err


def test_chunk_size_keeps_auto() -> None:
    """auto stays the default and is accepted as typed."""
    assert cli.make_context("preload", ["--chunk-size", "AUTO", "x"]).params["chunk_size"] == 0


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


@pytest.mark.parametrize("text", ["0", "4KiB"])
def test_max_request_span_refuses_what_cannot_carry_a_range(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str
) -> None:
    """--max-request-span 0 was silently the default; a span under 1 MiB is a usage error now."""
    args = ["--model", "a/b", "--dest", str(tmp_path / "d"), "--max-request-span", text]
    assert _exit(args, monkeypatch) == ExitCode.USAGE
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and "too small" in err[0], err
    assert not (tmp_path / "d").exists()
