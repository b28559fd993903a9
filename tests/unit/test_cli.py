import sys
from pathlib import Path

import pytest

import veneer
from veneer.cli import main
from veneer.util import proc

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create", "Bad/Name", "--from", "bb"]) == 2
    err = capsys.readouterr().err
    assert "Invalid machine name 'Bad/Name'" in err
    assert "Traceback" not in err
    assert main(["frobnicate"]) == 2
    assert main(["run", "--", "true"]) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["rebase"],
        ["rebase", "m1", "--all"],
        ["rebase", "--undo", "m1", "m2"],
        ["rebase", "m1", "--prefer", "neither"],
        ["commit", "m1"],
        ["commit", "m1", "img", "--revision"],
        ["image", "update", "bb"],
        ["image", "update", "bb", "--bogus", "--", "true"],
        ["image", "rollback", "bb", "--to", "x"],
    ],
)
def test_revision_and_rebase_usage_errors_exit_2(argv: list[str], tmp_path: Path) -> None:
    assert main(["--root", str(tmp_path), *argv]) == 2


def test_missing_image_exits_1_with_hint(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tmp_path), "image", "show", "nope"]) == 1
    err = capsys.readouterr().err
    assert "No image named 'nope'" in err and "veneer image list" in err


def test_library_exports_resolve() -> None:
    for name in veneer.__all__:
        assert getattr(veneer, name) is not None
    with pytest.raises(AttributeError):
        getattr(veneer, "no_such_thing")  # noqa: B009 - the lookup itself is under test


def test_cli_start_up_loads_no_heavy_modules() -> None:
    # Building the parser (what `veneer --help` does) must not load the machinery a verb may need.
    code = "import sys, veneer.cli; veneer.cli.build_parser(); print(' '.join(sorted(sys.modules)))"
    loaded = set(
        proc.run([sys.executable, "-c", code], capture=True, env={"PYTHONPATH": SRC}).stdout.split()
    )
    assert "veneer.cli" in loaded
    for heavy in (
        "veneer.machines.lifecycle",
        "veneer.images.bootstrap",
        "veneer.overlay.mount",
        "veneer.rebase.plan",
        "zstandard",
    ):
        assert heavy not in loaded


@pytest.mark.parametrize(
    "words",
    [
        ["image", "update", "--bind", "/srv/debs:/mnt:ro", "deb", "--", "dpkg", "-i", "/mnt/a.deb"],
        ["image", "update", "deb", "--bind=/srv/debs:/mnt:ro", "--", "dpkg", "-i", "/mnt/a.deb"],
    ],
)
def test_image_update_passes_binds_to_the_command(
    words: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from veneer.config.settings import Bind
    from veneer.machines import revisions
    from veneer.machines.run import RunOptions

    calls: list[tuple[str, list[str], RunOptions | None]] = []

    def update_image(
        layout: object,
        name: str,
        command: list[str],
        *,
        network: object,
        options: RunOptions | None,
        progress: object,
    ) -> SimpleNamespace:
        calls.append((name, command, options))
        return SimpleNamespace(current=2)

    monkeypatch.setattr(revisions, "update_image", update_image)
    assert main(["--root", str(tmp_path), *words]) == 0
    bind = Bind(source="/srv/debs", target="/mnt", readonly=True, options="")
    assert calls == [("deb", ["dpkg", "-i", "/mnt/a.deb"], RunOptions(binds=(bind,)))]


# Runs veneer with its stdout the write end of a pipe whose reader is gone: every write meets EPIPE, as
# `veneer list --json | head -c1` does once head has exited, without depending on who runs first.
CLOSED_PIPE = """
import os, sys
read_end, write_end = os.pipe()
os.close(read_end)
os.dup2(write_end, 1)
os.execv(sys.executable, [sys.executable, "-m", "veneer", *sys.argv[1:]])
"""


@pytest.mark.parametrize(
    "words",
    [
        ["list", "--json"],
        ["list"],
        ["image", "list", "--json"],
        ["tree", "--json"],
        ["network", "ls", "--json"],
        ["--help"],
        ["image", "create", "--help"],
        ["help", "image", "create"],  # longer than stdout's buffer: argparse's own write met the EPIPE
        ["completion", "zsh"],
    ],
)
def test_a_closed_pipe_ends_the_command_quietly(words: list[str], tmp_path: Path) -> None:
    env = {"PYTHONPATH": SRC, "VENEER_ROOT": str(tmp_path / "state"), "VENEER_RUN": str(tmp_path / "run")}
    result = proc.run([sys.executable, "-c", CLOSED_PIPE, *words], check=False, capture=True, env=env)
    assert result.stderr == ""
    assert result.returncode == 141


@pytest.mark.parametrize("words", [["image", "export", "bb", "-"], ["export", "m1", "-"]])
def test_export_refuses_stdout_rather_than_write_a_file_named_dash(
    words: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--root", str(tmp_path / "state"), *words]) == 2
    assert "veneer: Export writes a file, not stdout ('-')" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("verb", ["start", "stop", "restart"])
@pytest.mark.parametrize("timeout", ["-5", "abc", "nan", "inf"])
def test_a_timeout_is_seconds_0_or_more(
    verb: str, timeout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(tmp_path), verb, "m1", "--timeout", timeout]) == 2
    assert f"veneer: Invalid timeout '{timeout}'" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["run", "exec"])
def test_a_relative_workdir_is_a_usage_error(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(tmp_path), verb, "--workdir", "srv", "m1", "--", "pwd"]) == 2
    assert "veneer: Invalid working directory 'srv': not an absolute path" in capsys.readouterr().err


@pytest.mark.parametrize("count", ["-3", "x", "1.5"])
def test_logs_wants_a_count_of_lines(count: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tmp_path), "logs", "m1", "-n", count]) == 2
    assert f"'{count}' is not a number of lines" in capsys.readouterr().err


def test_every_command_has_a_description_examples_and_help_for_every_option() -> None:
    from veneer.cli import build_parser
    from veneer.cli.help import subcommands

    missing = []
    for words, summary, sub in subcommands(build_parser()):
        if words.startswith("_"):
            continue
        if not summary or not sub.description or "examples:\n  veneer " not in (sub.epilog or ""):
            missing.append(f"{words}: description or examples")
        for action in sub._actions:
            if action.option_strings and not action.help:
                missing.append(f"{words} {action.option_strings[0]}")
    assert missing == []


def test_help_shows_defaults_and_hides_internal_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stop", "--help"]) == 0
    assert "(default: 30)" in " ".join(capsys.readouterr().out.split())
    assert main(["--help"]) == 0
    assert "_reap" not in capsys.readouterr().out
    assert main(["_rep"]) == 2
    assert "_reap" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["create", "m", "--from", "bb", "--memroy", "1G"], "Unknown option '--memroy' for 'veneer create'",
         "Did you mean '--memory'? See 'veneer create --help'."),
        (["image", "craete", "x"], "Unknown command 'craete' for 'veneer image'",
         "Did you mean 'create'? See 'veneer image --help'."),
        (["strt", "m"], "Unknown command 'strt' for 'veneer'",
         "Did you mean 'start'? See 'veneer --help'."),
        (["create", "m", "--from", "bb", "extra"], "Unexpected argument(s): extra",
         "See 'veneer create --help'."),
        (["create", "m", "--from", "bb", "--port", "99999:80"], "port 99999 is out of range (1-65535)",
         "Use --port"),
    ],
)  # fmt: skip
def test_mistakes_get_a_suggestion_and_the_command_s_help(
    argv: list[str], message: str, hint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert message in err[0]
    assert err[1].strip().startswith(hint)


def _veneer_on_path(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "veneer"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m veneer "$@"\n')
    wrapper.chmod(0o755)
    (tmp_path / "state" / "images" / "deb").mkdir(parents=True)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": SRC, "VENEER_ROOT": str(tmp_path / "state")}


COMPLETE = (
    'eval "$(veneer completion bash)"; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _veneer; '
    'echo "${COMPREPLY[*]}"'
)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["ima"], "image"),
        (["image", "cr"], "create"),
        (["create", "web", "--fr"], "--from"),
        (["create", "web", "--from", ""], "deb"),
        (["image", "rm", ""], "deb"),
        (["rebase", "--prefer", ""], "base child"),
        (["--root", "/nowhere", "image", "rm", ""], ""),
    ],
)
def test_bash_completion_comes_from_the_parser(words: list[str], expected: str, tmp_path: Path) -> None:
    argv = ["bash", "-c", COMPLETE, "bash", "veneer", *words]
    result = proc.run(argv, capture=True, env=_veneer_on_path(tmp_path))
    assert result.stdout.strip() == expected


def test_bash_completion_offers_every_command_but_internal_ones(tmp_path: Path) -> None:
    argv = ["bash", "-c", COMPLETE, "bash", "veneer", ""]
    offered = proc.run(argv, capture=True, env=_veneer_on_path(tmp_path)).stdout.split()
    assert {"image", "create", "completion", "help", "start"} <= set(offered)
    assert not [word for word in offered if word.startswith("_")]


def test_help_topic_prints_the_command_s_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", "image", "rm"]) == 0
    assert capsys.readouterr().out.startswith("usage: veneer image rm")
    assert main(["help", "nosuch"]) == 2


def test_each_command_is_built_alone_by_the_module_that_declares_it() -> None:
    from veneer.cli import CLI_MODULES, VERB_MODULES, build_parser
    from veneer.cli.help import subcommands

    whole = {words: sub.format_help() for words, _, sub in subcommands(build_parser())}
    verbs = {words.split()[0] for words in whole}
    # help, completion and _complete read the whole parser: they are built with it.
    assert verbs - VERB_MODULES.keys() == {"help", "completion", "_complete"}
    assert set(VERB_MODULES) <= verbs and set(VERB_MODULES.values()) <= set(CLI_MODULES)
    for verb in VERB_MODULES:
        alone = {words: sub.format_help() for words, _, sub in subcommands(build_parser([verb]))}
        assert {w: h for w, h in whole.items() if w.split()[0] == verb}.items() <= alone.items()


@pytest.mark.parametrize(
    ("argv", "verb"),
    [
        (["list"], "list"),
        (["--debug", "--root", "/x", "status", "m1"], "status"),
        (["--root=/x", "image", "list"], "image"),
        (["--help"], None),
        (["--root"], None),
        ([], None),
    ],
)
def test_named_verb(argv: list[str], verb: str | None) -> None:
    from veneer.cli import named_verb

    assert named_verb(argv) == verb
