"""The served benchmark: `helix serve` in a child process, loaded by the bundled
load client (`python -m benchmarks.load`) at a series of request rates.

Prompts are token ids (the dummy models have no tokenizer), the same ones the
offline throughput run uses, each with a fixed output length (ignore_eos),
streamed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


# The load client's per-request arrays (inter-token gaps alone are ~1.4 MB per
# saturating run); the suite keeps the summary figures, which are computed from them.
_PER_REQUEST_KEYS = frozenset({"input_lens", "output_lens", "ttfts", "itls", "e2els", "generated_texts", "errors"})


def _child_env() -> dict[str, str]:
    """This environment, with the repository first on PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """A server command (listening on `port`) in a child process: started and
    awaited until /health answers on entering a with-block, SIGTERM on leaving."""

    def __init__(self, command: list[str], port: int, startup_timeout_s: float = 300.0):
        self.port = port
        self.command = command
        self.startup_timeout_s = startup_timeout_s
        self._log = tempfile.TemporaryFile()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerProcess":
        self._process = subprocess.Popen(self.command, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                         env=_child_env())
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the server exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise TimeoutError(f"the server did not become healthy in {self.startup_timeout_s:.0f} s")

    def __exit__(self, *_exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def log_tail(self, num_bytes: int = 4000) -> str:
        self._log.seek(0)
        return self._log.read()[-num_bytes:].decode(errors="replace")


def helix_serve(flags: list[str]) -> ServerProcess:
    """`helix serve` with `flags` on a free port."""
    port = free_port()
    return ServerProcess([sys.executable, "-m", "helix.cli", "serve", "--port", str(port), *flags], port)


def write_prompts(prompts: list[list[int]], output_len: int, path: Path) -> None:
    """The load client's JSONL dataset: token-id prompts, `output_len` tokens each."""
    with open(path, "w", encoding="utf-8") as file:
        for prompt in prompts:
            file.write(json.dumps({"prompt": prompt, "max_tokens": output_len}) + "\n")


def load_command(base_url: str, rate: float, num_prompts: int, dataset: Path, result_file: Path) -> list[str]:
    """The load client's command line for one rate: the first `num_prompts` prompts of `dataset`."""
    return [sys.executable, "-m", "benchmarks.load", "--base-url", base_url, "--dataset", "jsonl",
            "--dataset-path", str(dataset), "--ignore-eos", "--num-prompts", str(num_prompts),
            "--request-rate", "inf" if math.isinf(rate) else str(rate), "--seed", "0",
            "--result-file", str(result_file), "--disable-tqdm"]


def run_rate(base_url: str, rate: float, num_prompts: int, dataset: Path, work_dir: Path,
             timeout_s: float = 600.0) -> dict[str, Any]:
    """One load-client run; returns its result JSON and the command that made it."""
    result_file = work_dir / f"load_rate{rate}.json"
    command = load_command(base_url, rate, num_prompts, dataset, result_file)
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s,
                               env=_child_env())
    if completed.returncode != 0:
        raise RuntimeError(f"load client failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    result = {key: value for key, value in json.loads(result_file.read_text()).items()
              if key not in _PER_REQUEST_KEYS}
    result["command"] = (" ".join(command[1:]).replace(base_url, "$URL").replace(str(dataset), "prompts.jsonl")
                         .replace(str(result_file), "result.json"))
    return result


def prompts_for_rate(rate: float, num_prompts: int, seconds_per_rate: float) -> int:
    """Enough requests for about `seconds_per_rate` of arrivals (at least 8); the
    saturating run sends every prompt at once."""
    if math.isinf(rate):
        return num_prompts
    return min(num_prompts, max(8, round(rate * seconds_per_rate)))


def sweep(flags: list[str], rates: list[float], prompts: list[list[int]], output_len: int,
          seconds_per_rate: float = 16.0, warmup_prompts: list[list[int]] | None = None) -> dict[str, Any]:
    """Start a server with `flags`, run every rate against it (the saturating
    rate sends every prompt; lower rates the first ones), and stop it.

    `warmup_prompts` (other prompts than `prompts`, so they leave nothing in the
    prefix cache that the measured runs could reuse) are sent all at once
    first, untimed: a server's first burst also pays one-off costs (the
    allocator's first large blocks, the speculation policy measuring each
    batch size it meets for the first time), which a long-running server has
    paid long before. The warm-up's own figures are kept beside the runs."""
    with tempfile.TemporaryDirectory() as work, helix_serve(flags) as server:
        dataset = Path(work) / "prompts.jsonl"
        write_prompts(prompts, output_len, dataset)
        warmup = None
        if warmup_prompts:
            warmup_dataset = Path(work) / "warmup.jsonl"
            write_prompts(warmup_prompts, output_len, warmup_dataset)
            warmup = run_rate(server.base_url, math.inf, len(warmup_prompts), warmup_dataset, Path(work))
        results = []
        for rate in rates:
            count = prompts_for_rate(rate, len(prompts), seconds_per_rate)
            results.append(run_rate(server.base_url, rate, count, dataset, Path(work)))
        return {"server_command": "helix serve " + " ".join(flags), "runs": results,
                **({"warmup": _warmup_summary(warmup)} if warmup is not None else {})}


def _warmup_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {key: result[key] for key in ("completed", "output_throughput", "median_ttft_ms", "median_tpot_ms")}
