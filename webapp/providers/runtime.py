"""The embedded model's runtime: a llama.cpp build that runs on this CPU, and proof that it does.

llama-cpp-python ships as source only, and by default compiles llama.cpp with
`GGML_NATIVE=ON`: whatever the build machine's CPU has is used, AMX included,
and ggml's AMX path segfaults on current Xeons (llama.cpp issue 20824). So the
build here is never native unless `LLAMA_NATIVE=1` asks for it. Its
instruction set is chosen from the CPU's flags at install time, among variants
that name every extension they use (see `VARIANTS`; the README has their
measured speed).

pip caches built wheels by version, not by `CMAKE_ARGS`, so a wheel built with
other flags would come back. Wheels are built into a cache of our own, one
folder per build key (flags, version, Python, compiler); a record in the venv
says which build is installed, and `install` replaces any other.

`probe` runs a one-token generation in a child process: a runtime that dies
there (a signal, an illegal instruction) becomes a clear error, not a worker
crash loop.

    python -m webapp.providers.runtime install   # make run / make test: the right build, once
    python -m webapp.providers.runtime flags     # the CMake flags this machine gets
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from webapp.config import Config

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements-local.txt"
LLAMA_VERSION = "0.3.36"
# Where the venv says which build it holds.
RECORD = Path(sys.prefix) / "llama-build.json"
PROBE_TIMEOUT = 180.0

_OFF = ("-DLLAVA_BUILD=OFF", "-DGGML_NATIVE=OFF")
_AVX2 = ("-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON")


@dataclass(frozen=True)
class Variant:
    """One instruction set: the CPU flags it needs and the CMake flags that build it.

    Every extension is named explicitly and GGML_NATIVE is off, so the build
    uses exactly these, whatever CPU compiles it. None enables AMX.
    """

    name: str
    needs: frozenset[str]
    cmake: tuple[str, ...]


# Fastest first; the first whose needs the CPU meets is built.
VARIANTS = (
    Variant(
        "avx512",
        frozenset(
            [
                "avx",
                "avx2",
                "fma",
                "f16c",
                "bmi2",
                "avx512f",
                "avx512cd",
                "avx512vl",
                "avx512dq",
                "avx512bw",
                "avx512vbmi",
                "avx512_vnni",
                "avx512_bf16",
            ]
        ),
        (
            *_OFF,
            *_AVX2,
            "-DGGML_AVX512=ON",
            "-DGGML_AVX512_VBMI=ON",
            "-DGGML_AVX512_VNNI=ON",
            "-DGGML_AVX512_BF16=ON",
        ),
    ),
    Variant("avx2", frozenset(["avx", "avx2", "fma", "f16c", "bmi2"]), (*_OFF, *_AVX2)),
    # Any x86-64 (SSE only), and other architectures with ggml's portable defaults.
    Variant(
        "baseline", frozenset(), (*_OFF, "-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF")
    ),
)
NATIVE = Variant("native", frozenset(), ("-DLLAVA_BUILD=OFF", "-DGGML_NATIVE=ON"))


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags, from /proc/cpuinfo (empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def choose(flags: frozenset[str], *, native: bool = False, machine: str | None = None) -> Variant:
    """The build for a CPU with `flags`: native only when asked, else the fastest it can run."""
    if native:
        return NATIVE
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return VARIANTS[-1]
    return next(v for v in VARIANTS if v.needs <= flags)


@dataclass(frozen=True)
class Build:
    """What is (or should be) installed: the variant, its flags, and their cache key."""

    variant: str
    cmake_args: str
    key: str

    @classmethod
    def of(cls, variant: Variant) -> Build:
        compiler = _compiler_version()
        python = f"{sys.implementation.name}{sys.version_info[0]}{sys.version_info[1]}"
        cmake_args = " ".join(variant.cmake)
        material = "\n".join([LLAMA_VERSION, cmake_args, python, compiler, platform.machine()])
        return cls(
            variant.name,
            cmake_args,
            f"{variant.name}-{hashlib.sha256(material.encode()).hexdigest()[:16]}",
        )


def _compiler_version() -> str:
    try:
        out = subprocess.run(
            ["c++", "--version"], capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.partition("\n")[0]


def wanted(config: Config) -> Build:
    return Build.of(choose(cpu_flags(), native=config.llama_native))


def installed() -> Build | None:
    """The build this venv holds, per its record (None: unknown, e.g. an older Makefile's)."""
    try:
        return Build(**json.loads(RECORD.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def wheel_cache(config: Config, build: Build) -> Path:
    return Path(config.model_cache_dir).expanduser() / "wheels" / build.key


def install(config: Config) -> int:
    """Make the venv hold the wanted build: from our cache, or compiled into it once."""
    build = wanted(config)
    if installed() == build and _importable():
        return 0
    folder = wheel_cache(config, build)
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    if not wheels:
        print(
            f">> Building llama.cpp for this CPU ({build.variant}: {build.cmake_args}).\n"
            ">> The first time takes about 5 minutes on 2 cores; the wheel is kept in "
            f"{folder.parent} for next time."
        )
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CMAKE_ARGS": build.cmake_args, "FORCE_CMAKE": "1"}
        # --no-cache-dir: pip's own cache would hand back a wheel built with other flags.
        result = subprocess.run(
            [
                *pip,
                "wheel",
                "--no-cache-dir",
                "--no-deps",
                "--require-hashes",
                "-r",
                str(REQUIREMENTS),
                "-w",
                str(folder),
            ],
            env=env,
            check=False,
        )
        wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
        if result.returncode != 0 or not wheels:
            print(
                "error: llama-cpp-python failed to build. It needs gcc, g++ and cmake "
                "(apt-get install build-essential cmake).",
                file=sys.stderr,
            )
            return 1
    # The folder holds the llama wheel we built from the hash-checked source, and
    # the hash-checked wheels of its dependencies, which `pip wheel` fetched.
    result = subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--force-reinstall", *map(str, folder.glob("*.whl"))],
        check=False,
    )
    if result.returncode != 0:
        return 1
    RECORD.write_text(json.dumps(asdict(build), indent=1) + "\n")
    print(f">> llama.cpp runtime: {build.variant} build installed ({build.key}).")
    return 0


def _importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


# -- proving the runtime -------------------------------------------------------


class RuntimeBroken(RuntimeError):
    """The runtime cannot generate on this machine; the message says why and what to try."""


def _probe_marker(config: Config, model: Path) -> Path | None:
    """A file whose presence says this runtime, model and CPU already passed the probe."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or spec.origin is None:
            return None
        lib = sorted(Path(spec.origin).parent.glob("lib/libggml-cpu*")) or [Path(spec.origin)]
        stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in [*lib, model]]
    except OSError:
        return None
    material = json.dumps([stats, sorted(cpu_flags()), config.local_threads])
    digest = hashlib.sha256(material.encode()).hexdigest()[:24]
    return Path(config.model_cache_dir).expanduser() / "probes" / digest


def probe(config: Config, model: Path) -> None:
    """Generate one token in a child process; raise RuntimeBroken if that fails.

    A pass is remembered for this runtime, model file and CPU, so a restart
    does not load the weights twice.
    """
    fault = config.local_runtime_fault
    marker = None if fault else _probe_marker(config, model)
    if marker is not None and marker.exists():
        return
    command = [sys.executable, "-m", "webapp.providers.runtime", "probe", str(model)]
    env = {**os.environ, "LOCAL_RUNTIME_FAULT": fault}
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=PROBE_TIMEOUT, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeBroken(
            f"The embedded model did not produce a token within {PROBE_TIMEOUT:g} s."
        ) from None
    if result.returncode == 0:
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        return
    raise RuntimeBroken(_explain(result.returncode, result.stderr))


def _explain(returncode: int, stderr: str) -> str:
    fix = (
        "Rebuild the portable runtime with `make run` (it rebuilds when LLAMA_NATIVE is "
        "unset), or set OPENAI_API_KEY or OPENAI_BASE_URL to use a model server instead."
    )
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        what = {
            "SIGILL": "uses an instruction this CPU does not have",
            "SIGSEGV": "crashed",
            "SIGBUS": "crashed",
            "SIGKILL": "was killed (out of memory?)",
        }.get(name, "died")
        return f"The embedded model's runtime {what} ({name}) on its first token. {fix}"
    last = stderr.strip().splitlines()[-1:] or ["no output"]
    return f"The embedded model could not generate a token: {last[0][:200]}. {fix}"


def _probe_main(model: str) -> int:
    """In the child: load the model and generate one token."""
    config = Config.from_env()
    from llama_cpp import Llama

    llama = Llama(
        model_path=model,
        n_ctx=256,
        n_threads=config.local_threads or os.cpu_count() or 1,
        verbose=False,
    )
    if config.local_runtime_fault == "crash":
        import ctypes

        ctypes.string_at(0)  # a real SIGSEGV, as the AMX kernel gives
    llama.create_completion("def", max_tokens=1, temperature=0.0)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["install"]:
        raise SystemExit(install(Config.from_env()))
    if args == ["flags"]:
        print(wanted(Config.from_env()).cmake_args)
        raise SystemExit(0)
    if len(args) == 2 and args[0] == "probe":
        raise SystemExit(_probe_main(args[1]))
    raise SystemExit("usage: python -m webapp.providers.runtime install | flags | probe MODEL")
