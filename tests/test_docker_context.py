"""The image's build stage, replayed without Docker: the files that `.dockerignore` lets into the
build context, copied as the Dockerfile's build stage copies them, must build the wheel with
every package that pyproject lists. (The image once failed to build because one was left out.)

The rules follow Docker's: `#` comments, patterns matched with `*`, `?` and `**` against a path
or any of its parents, the last matching line wins, `!` lets a path back in. The opt-in
`-m docker` suite (tests/docker/) builds the real image."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pattern(glob: str) -> re.Pattern[str]:
    """Docker's pattern syntax as a regular expression over slash-separated paths."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(f"^{out}$")


class DockerIgnore:
    """`.dockerignore` as `docker build` reads it."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, str, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            glob = line.removeprefix("!").strip().strip("/")
            glob = re.sub("/+", "/", glob).removeprefix("./")
            self.rules.append((keep, glob, _pattern(glob)))

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for keep, _glob, pattern in self.rules:
            if any(pattern.match(prefix) for prefix in prefixes):
                verdict = not keep
        return verdict

    def could_keep_below(self, directory: str) -> bool:
        """Whether a `!` rule could let in something under an excluded directory."""
        head = directory.split("/")[0]
        return any(keep and (glob.split("/")[0] == head or "*" in glob.split("/")[0]) for keep, glob, _ in self.rules)


def build_context(root: Path) -> list[str]:
    """The files `docker build root` sends to the builder, as sorted relative paths."""
    ignore = DockerIgnore((root / ".dockerignore").read_text())
    sent = {"Dockerfile", ".dockerignore"}  # always sent, whatever the rules say
    stack = [root]
    while stack:
        for path in sorted(stack.pop().iterdir()):
            rel = path.relative_to(root).as_posix()
            if path.is_dir() and not path.is_symlink():
                if not ignore.excluded(rel) or ignore.could_keep_below(rel):
                    stack.append(path)
            elif not ignore.excluded(rel):
                sent.add(rel)
    return sorted(sent)


def build_stage_copies(dockerfile: str) -> list[tuple[list[str], str]]:
    """The first stage's `COPY src... dest` lines (shell or JSON form, no --from)."""
    stage = re.split(r"^FROM\s", dockerfile, flags=re.MULTILINE)[1]
    copies = []
    for line in re.findall(r"^COPY\s+(.+)$", stage, flags=re.MULTILINE):
        args = json.loads(line) if line.lstrip().startswith("[") else line.split()
        args = [arg for arg in args if not arg.startswith("--")]
        copies.append((args[:-1], args[-1]))
    return copies


def replay_build_stage(root: Path, into: Path) -> Path:
    """Copy what the build stage's COPY lines take from the build context into ``into``."""
    context = set(build_context(root))
    for sources, dest in build_stage_copies((root / "Dockerfile").read_text()):
        target = into / dest
        for source in sources:
            source = source.strip("/")
            files = [f for f in context if f == source or f.startswith(source + "/")]
            assert files, f"COPY {source}: nothing in the build context (see .dockerignore)"
            for file in files:
                if file == source:  # a file: into the folder (dest/ or several sources) or as dest
                    to = target / Path(file).name if dest.endswith("/") or len(sources) > 1 else target
                else:  # a folder: its contents into dest
                    to = target / Path(file).relative_to(source)
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / file, to)
    return into


def _packages() -> list[str]:
    """The folders of the packages pyproject lists (``demo.data`` is ``demo/data``)."""
    packages: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    return [p.replace(".", "/") for p in packages]


def test_the_dev_extras_can_build_the_wheel_offline() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev = pyproject["project"]["optional-dependencies"]["dev"]
    assert set(pyproject["build-system"]["requires"]) <= set(dev)


def test_dockerignore_follows_dockers_rules() -> None:
    ignore = DockerIgnore("# comment\n*\n!src/\n**/__pycache__\n!keep?.txt\nsrc/secret*\n")
    assert ignore.excluded("tests/test_x.py") and ignore.excluded(".git/config")
    assert not ignore.excluded("src/a/b.py") and not ignore.excluded("keep1.txt")
    assert ignore.excluded("src/a/__pycache__/b.pyc") and ignore.excluded("src/secret.key")
    assert not ignore.could_keep_below("tests") and ignore.could_keep_below("src")


def test_the_build_context_and_the_build_stage_take_every_package() -> None:
    context = build_context(ROOT)
    copies = build_stage_copies((ROOT / "Dockerfile").read_text())
    copied = {source.strip("/") for sources, _ in copies for source in sources}
    for package in _packages():
        assert any(f.startswith(f"{package}/") for f in context), f"{package}/ is not let in by .dockerignore"
        assert package.split("/")[0] in copied, f"the Dockerfile's build stage does not COPY {package}"
    assert not [f for f in context if f.startswith(("tests/", "bench/", "docs/", ".venv/", ".git/"))]


def test_the_wheel_builds_from_what_the_build_stage_copies(tmp_path: Path) -> None:
    src = replay_build_stage(ROOT, tmp_path / "src")
    # --no-build-isolation: offline, with the build requirements the dev extras install
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    hint = "(the dev extras carry [build-system].requires: rerun scripts/setup)" if "bdist_wheel" in proc.stderr else ""
    assert proc.returncode == 0, f"pip wheel failed in the replayed build stage {hint}:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = (tmp_path / "dist").glob("batchstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in _packages():
        code = (ROOT / package / "__init__.py").exists()  # demo/data holds data files only
        assert (f"{package}/__init__.py" in names) if code else any(n.startswith(f"{package}/") for n in names), (
            f"the wheel lacks {package}"
        )
    assert "devkafka/pom.xml" in names and any(n.startswith("demo/data/") for n in names), "package data"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "the license file the metadata names"
