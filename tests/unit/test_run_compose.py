"""`make run` uses docker compose only where `docker compose` works; else it says so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from deploy import run


def fake_docker(bin_dir: Path, compose_works: bool, engine_answers: bool) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "docker"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = compose ]; then exit {0 if compose_works else 125}; fi\n'
        f'if [ "$1" = info ]; then exit {0 if engine_answers else 1}; fi\n'
        "exit 2\n"
    )
    script.chmod(0o755)


@pytest.mark.parametrize(
    ("compose_works", "engine_answers", "expected", "said"),
    [
        (False, True, False, "not Compose v2"),
        (True, False, False, "no Docker engine answers"),
        (True, True, True, None),
    ],
)
def test_compose_is_used_only_when_it_works(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    compose_works: bool,
    engine_answers: bool,
    expected: bool,
    said: str | None,
):
    caplog.set_level(logging.INFO, "messenger.run")
    fake_docker(tmp_path / "bin", compose_works, engine_answers)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert run.compose_available() is expected
    lines = [record.getMessage() for record in caplog.records]
    if said is None:
        assert lines == []
    else:
        (line,) = lines
        assert said in line and "private" in line and "node" in line


def test_no_docker_at_all_is_silent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert run.compose_available() is False
    assert caplog.records == []


def test_compose_runs_on_the_local_images_when_make_images_made_them(tmp_path: Path) -> None:
    env_file = tmp_path / "local.env"
    assert run.compose_command(False, env_file) == ["docker", "compose", "up", "--build"]
    env_file.write_text("MESSENGER_RABBITMQ_IMAGE=messenger-local/rabbitmq:4.0\n")
    assert run.compose_command(True, env_file) == [
        "docker",
        "compose",
        "--env-file",
        str(env_file),
        "--profile",
        "cluster",
        "up",
        "--build",
    ]
