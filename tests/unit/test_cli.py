import sys

import pytest

import veneer
from veneer.cli import main


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create", "Bad/Name", "--from", "bb"]) == 2
    err = capsys.readouterr().err
    assert "Invalid machine name 'Bad/Name'" in err
    assert "Traceback" not in err
    assert main(["frobnicate"]) == 2
    assert main(["run", "--", "true"]) == 2


def test_missing_image_exits_1_with_hint(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tmp_path), "image", "show", "nope"]) == 1
    err = capsys.readouterr().err
    assert "No image named 'nope'" in err and "veneer image list" in err


def test_library_exports_resolve() -> None:
    for name in veneer.__all__:
        assert getattr(veneer, name) is not None
    with pytest.raises(AttributeError):
        _ = veneer.no_such_thing  # type: ignore[attr-defined]


def test_cli_start_up_loads_no_heavy_modules() -> None:
    # Importing the CLI and building its parser must not load the machinery a verb may need.
    for name in list(sys.modules):
        if name.startswith("veneer.") and name not in ("veneer.errors",):
            del sys.modules[name]
    from veneer.cli import build_parser

    build_parser()
    loaded = {name for name in sys.modules if name.startswith("veneer.")}
    assert "veneer.machines.lifecycle" not in loaded
    assert "veneer.images.bootstrap" not in loaded
    assert "zstandard" not in sys.modules
