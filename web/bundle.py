"""`python -m web.bundle build | ensure | check`: the committed front-end build and its sources.

The build output (web/dist/) is committed, so CI, `make run` and the Docker image serve the
page without Node.js or the npm registry. Its freshness is checked without Node too:
dist/build-info.json records a digest of every input of the build, and `check` (and
tests/unit/test_web_build.py) compares it with the sources as they are now.

- `build`: regenerate src/generated/protocol.ts, `npm ci` when node_modules does not match
  package-lock.json, `npm run build` (tsc, then esbuild), and stamp the digest (`make web`).
- `ensure`: `build` when the sources changed and npm is installed; otherwise say so and keep
  the committed build (`make run` calls it).
- `check`: exit 1 when dist/ is stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from web import protocol_gen

ROOT = Path(__file__).resolve().parent
DIST = ROOT / "dist"
BUILD_INFO = DIST / "build-info.json"
# Everything `npm run build` reads: a change to any of them calls for a new build.
INPUT_FILES = ("package.json", "package-lock.json", "build.mjs", "tsconfig.json")
INPUT_DIRS = ("src",)

logger = logging.getLogger("web.bundle")


class BuildError(RuntimeError):
    """The front end could not be built."""


def input_paths() -> list[Path]:
    paths = [ROOT / name for name in INPUT_FILES]
    for directory in INPUT_DIRS:
        paths += [p for p in (ROOT / directory).rglob("*") if p.is_file()]
    return sorted(paths, key=lambda p: p.relative_to(ROOT).as_posix())


def sources_digest() -> str:
    """sha256 over (path, sha256 of content) of every build input."""
    outer = hashlib.sha256()
    for path in input_paths():
        inner = hashlib.sha256(path.read_bytes()).hexdigest()
        outer.update(f"{path.relative_to(ROOT).as_posix()}\0{inner}\n".encode())
    return outer.hexdigest()


def recorded_digest() -> str | None:
    try:
        info = json.loads(BUILD_INFO.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = info.get("sources_sha256") if isinstance(info, dict) else None
    return value if isinstance(value, str) else None


def is_fresh() -> bool:
    return recorded_digest() == sources_digest() and (DIST / "index.html").is_file()


def stamp() -> None:
    info = {
        "sources_sha256": sources_digest(),
        "note": "written by `python -m web.bundle build`; tests/unit/test_web_build.py checks it",
    }
    BUILD_INFO.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _run(*command: str) -> None:
    logger.info("web: %s", " ".join(command))
    result = subprocess.run(command, cwd=ROOT, check=False)
    if result.returncode != 0:
        raise BuildError(f"`{' '.join(command)}` failed (exit {result.returncode})")


def _dependencies_installed() -> bool:
    installed = ROOT / "node_modules" / ".package-lock.json"
    lock = ROOT / "package-lock.json"
    return installed.is_file() and installed.stat().st_mtime >= lock.stat().st_mtime


def build() -> None:
    if shutil.which("npm") is None:
        raise BuildError("npm is not installed: install Node.js 20 (it brings npm)")
    protocol_gen.OUTPUT.write_text(protocol_gen.render(), encoding="utf-8")
    if not _dependencies_installed():
        _run("npm", "ci", "--no-audit", "--no-fund")
    _run("npm", "run", "build")
    stamp()


def ensure() -> None:
    """For `make run`: a fresh build when the sources changed and npm can make one."""
    if is_fresh():
        return
    if shutil.which("npm") is None:
        logger.warning(
            "web/src changed since web/dist was built and npm is not installed: serving the "
            "committed build (install Node.js 20 and run `make web`)"
        )
        return
    logger.info("web/src changed since web/dist was built: building the front end")
    try:
        build()
    except BuildError as exc:
        logger.warning("web: %s; serving the last build", exc)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = argv[0] if argv else "check"
    try:
        if command == "build":
            build()
        elif command == "ensure":
            ensure()
        elif command == "check":
            if not is_fresh():
                logger.error("web/dist is stale: run `make web`")
                return 1
        else:
            logger.error("usage: python -m web.bundle build | ensure | check")
            return 2
    except BuildError as exc:
        logger.error("web: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
