"""The `connector` command as a user runs it: its output and its exit code.

Most tests run it in this process, through its entry point (`jobs.cli.main`), with stdout, stderr and the
environment of the invocation its own (typer's `CliRunner`). A few run it as a subprocess, so that the entry point
itself stays honest, and so do the commands that run until a signal stops them (`in_background`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from jobs.cli import main


@dataclass
class Ran:
    """What a user sees of one command."""

    returncode: int
    stdout: str
    stderr: str


def connector(*args: str, cwd: Path, env: dict[str, str] | None = None, check: int | None = 0) -> Ran:
    """`connector ARGS` in this process, in `cwd`, with `env` added to the environment for the invocation."""
    with contextlib.chdir(cwd), CliRunner().isolation(env=env) as (stdout, stderr, _):
        code = main(list(args))
        sys.stdout.flush()
        sys.stderr.flush()
        ran = Ran(code, stdout.getvalue().decode(), stderr.getvalue().decode())
    return _checked(ran, check)


def connector_process(*args: str, cwd: Path, env: dict[str, str] | None = None, check: int | None = 0) -> Ran:
    """`connector ARGS` as a subprocess (`python -m jobs.cli`), with no CONNECTOR_* variable but those of `env`."""
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=_environment(env), capture_output=True, text=True,
        timeout=120,
    )
    return _checked(Ran(result.returncode, result.stdout, result.stderr), check)


def _environment(env: dict[str, str] | None) -> dict[str, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    full_env.update(env or {})
    return full_env


def _checked(ran: Ran, check: int | None) -> Ran:
    if check is not None:
        shown = f"exit {ran.returncode}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
        assert ran.returncode == check, shown
    return ran


@dataclass
class Background:
    process: subprocess.Popen[str]
    stdout: str = ""
    stderr: str = ""

    def lines(self, count: int) -> dict[str, str]:
        """The first `count` lines of "name: value" the command prints."""
        assert self.process.stdout is not None
        return dict(self.process.stdout.readline().strip().split(": ", 1) for _ in range(count))


@contextlib.contextmanager
def in_background(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Iterator[Background]:
    """A long-running `connector` command; stopped with SIGTERM when the block ends (killed if it hangs)."""
    process = subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=_environment(env),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = Background(process)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            running.stdout, running.stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def demo_hints(stdout: str) -> list[tuple[dict[str, str], list[str]]]:
    """The `Try:` commands the demo prints, as (environment, arguments after `connector`)."""
    hints = []
    for line in stdout.split("\nTry:\n", 1)[1].splitlines():
        words = shlex.split(line)
        env = dict(word.split("=", 1) for word in words[: words.index("connector")])
        hints.append((env, words[words.index("connector") + 1:]))
    assert len(hints) == 3, stdout
    return hints
