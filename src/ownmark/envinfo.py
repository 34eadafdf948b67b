"""What ``ownmark env`` reports: versions, the torch build, the device, threads and the machine.

People asked to reproduce a result (or to report a bug) need the same few facts every time:
which ownmark, Python and torch, whether torch was built for CUDA or MPS and can use it, how
many threads it runs, which optional packages are present, and what CPU it ran on.
:func:`environment_report` collects them into one JSON-serialisable dict without importing
the heavy optional packages (their versions come from the installed distributions' metadata).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ownmark import __version__

__all__ = ["PACKAGES", "auto_device", "cpu_model", "environment_report", "package_version"]

#: Distributions reported by name, in this order, with what ownmark uses each for.
PACKAGES: dict[str, str] = {
    "numpy": "arrays",
    "safetensors": "key and model files",
    "fastapi": "ownmark serve",
    "uvicorn": "ownmark serve",
    "httpx": "ownmark verify --url",
    "scipy": "calibration",
    "onnx": "ownmark export (extra: onnx)",
    "onnxruntime": "serve --backend onnxruntime (extra: onnx)",
    "cryptography": "signed evidence, time stamps (extras: sign, timestamp)",
    "mlserver": "interoperability tests",
    "argcomplete": "shell completion (extra: completion)",
}

#: Environment variables that change how torch or ownmark run (reported when set).
_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "PYTORCH_ENABLE_MPS_FALLBACK",
    "OWNMARK_TOKEN",
    "OWNMARK_SERVE_TOKEN",
    "OWNMARK_DEBUG",
)
#: Their values are secrets: the report says only that they are set.
_SECRET_VARIABLES = ("OWNMARK_TOKEN", "OWNMARK_SERVE_TOKEN")


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None if it is not installed.

    Read from the distribution's metadata, so nothing is imported (onnxruntime and mlserver
    take seconds to import).
    """
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def auto_device() -> str:
    """The device ``--device auto`` stands for (the training loop's own choice, so that this
    report and training never disagree): CUDA if usable, then Apple's MPS, then the CPU."""
    from ownmark.train import resolve_device

    return resolve_device("auto")


def cpu_model() -> str:
    """The CPU's marketing name ("" if the platform does not say).

    ``platform.processor()`` is empty or just the architecture on Linux, so read
    ``/proc/cpuinfo`` there and ask ``sysctl`` on macOS.
    """
    cpuinfo = Path("/proc/cpuinfo")
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() in ("model name", "Hardware", "Processor", "cpu model"):
                return value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            done = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor()


def _usable_cores() -> int | None:
    """Cores this process may run on (a container or ``taskset`` can allow fewer than exist)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is None:
        return None
    return len(affinity(0))


def _torch_report() -> dict[str, Any]:
    # Any: torch's backend modules are untyped (their is_available() have no annotations).
    backends: Any = torch.backends
    cuda_available = torch.cuda.is_available()
    mps = getattr(backends, "mps", None)
    cuda_build = torch.version.cuda
    hip_build = getattr(torch.version, "hip", None)
    if cuda_build:
        build = f"CUDA {cuda_build}"
    elif hip_build:
        build = f"ROCm {hip_build}"
    else:
        build = "CPU"
    return {
        "version": torch.__version__,
        "build": build,
        "cuda_build": cuda_build,
        "hip_build": hip_build,
        "debug": bool(torch.version.debug),
        "backends": {
            "cuda": cuda_available,
            "cudnn": bool(backends.cudnn.is_available()),
            "cudnn_version": backends.cudnn.version() if backends.cudnn.is_available() else None,
            "mps_built": bool(mps is not None and mps.is_built()),
            "mps": _mps_available(),
            "mkl": bool(backends.mkl.is_available()),
            "mkldnn": bool(backends.mkldnn.is_available()),
            "openmp": bool(backends.openmp.is_available()),
        },
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda_available
        else [],
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
    }


def environment_report() -> dict[str, Any]:
    """Everything ``ownmark env`` prints, as a JSON-serialisable dict.

    Keys: ``ownmark``, ``python`` (version, implementation, executable), ``torch`` (version,
    build, backends, CUDA devices, threads), ``device`` (what ``--device auto`` picks),
    ``packages`` (name -> version or None), ``platform`` (system, machine, CPU model, cores),
    ``variables`` (relevant environment variables that are set; secret ones as "(set)").
    """
    variables = {
        name: "(set)" if name in _SECRET_VARIABLES else os.environ[name]
        for name in _VARIABLES
        if name in os.environ
    }
    return {
        "ownmark": __version__,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "torch": _torch_report(),
        "device": auto_device(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "description": platform.platform(),
            "machine": platform.machine(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "usable_cores": _usable_cores(),
        },
        "variables": variables,
    }
