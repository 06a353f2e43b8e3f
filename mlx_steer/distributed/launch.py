"""launch: ``mlx.launch`` with an exit status, free loopback ports, and no busy-waiting.

``mlx.launch`` (mlx 0.32) stops the other ranks when one fails, but itself exits 0, so a script
or CI job cannot tell that the run failed; and its output loop busy-waits (each rank's I/O thread
selects on the rank's always-writable stdin pipe, and the main loop on a stdin at end of file):
on this 2-core machine it burned ~1.2 cores while two ranks computed. This exits with the first
failed rank's code (1 if a rank was killed), after killing anything of the run still alive.

With every rank on this machine (no ``--hosts``/``--hostfile``) and the ring backend, it starts
the ranks itself, with the environment ``mlx.launch`` gives them (``MLX_RANK``, and
``MLX_HOSTFILE`` naming a ring over 127.0.0.1), their output going straight to this process's
stdout and stderr, picking free ports instead of mlx's fixed 32323 unless ``--starting-port`` is
given. Anything else (other hosts, other backends, ``--python``, ``--connections-per-ip``) runs
``mlx.launch`` unchanged::

    python -m mlx_steer.distributed.launch --backend ring -n 2 -- mlx-steer extract pairs.jsonl ...
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

__all__ = ["free_port_range", "launch", "main"]

_FAILED = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")


def free_port_range(n: int, *, host: str = "127.0.0.1", tries: int = 50) -> int:
    """A first port ``p`` with ``p .. p + n - 1`` all free to bind on ``host`` right now."""
    for _ in range(tries):
        with socket.socket() as s:
            s.bind((host, 0))
            start = s.getsockname()[1]
        if start + n > 65535:
            continue
        socks = []
        try:
            for p in range(start, start + n):
                s = socket.socket()
                socks.append(s)
                s.bind((host, p))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"found no {n} consecutive free ports on {host}")


def launch(args: Sequence[str], *, timeout: float | None = None) -> int:
    """Run ``mlx.launch ARGS`` (or, all ranks local over the ring, the same run without its busy
    output loop) and return its ranks' status: 0 when every rank succeeded, else the first failed
    rank's exit code (1 if it was killed or the code was 0). The run's processes are killed when it
    ends, times out (status 124) or this is interrupted."""
    args = list(args)
    local = _local_ring(args)
    if local is not None:
        return _run_local(*local, timeout=timeout)
    opts = args[: args.index("--")] if "--" in args else args
    if not any(o.split("=")[0] in ("--hosts", "--hostfile", "--starting-port", "-p") for o in opts):
        n = _ranks(opts)
        args = ["--hosts", "127.0.0.1", "--starting-port", str(free_port_range(n)), *args]
    cmd = [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, start_new_session=True)
    stderr = proc.stderr
    failed: list[int] = []
    try:
        import threading

        def pump() -> None:
            for raw in iter(stderr.readline if stderr is not None else bytes, b""):
                sys.stderr.buffer.write(raw)
                sys.stderr.buffer.flush()
                m = _FAILED.search(raw.decode(errors="replace"))
                if m:
                    failed.append(int(m.group(2)) if m.group(2) not in (None, "0") else 1)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return _timed_out(timeout)
        t.join(timeout=5)
    finally:
        _kill_group(proc)
    if code:
        return code
    return (failed[0] if failed[0] > 0 else 1) if failed else 0


def _local_ring(args: list[str]) -> tuple[int, int | None, list[str], list[str], str | None] | None:
    """(ranks, starting port, environment assignments, command, cwd) when ``args`` ask for ring
    ranks on this machine only, with options this launcher handles; else None (mlx.launch runs)."""
    if "--" not in args:
        return None
    opts, command = args[: args.index("--")], args[args.index("--") + 1 :]
    try:
        known, rest = _options().parse_known_args(opts)
    except SystemExit:  # a malformed option: let mlx.launch say what is wrong
        return None
    if rest or not command or known.repeat_hosts < 1 or known.backend not in (None, "ring"):
        return None
    if known.backend is None:
        try:
            import mlx.core as mx

            if mx.cuda.is_available():  # mlx.launch would pick nccl
                return None
        except (ImportError, AttributeError):
            pass
    env = list(known.env) + (["MLX_RING_VERBOSE=1"] if known.verbose else [])
    return known.repeat_hosts, known.starting_port, env, command, known.cwd


def _blas_threads(n: int) -> dict[str, str]:
    """OpenBLAS threads per rank: the cores shared out (its busy-waiting threads slow down when they
    outnumber the cores); a setting the user made wins (it comes later in the rank's environment)."""
    return {"OPENBLAS_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}


def _run_local(n: int, port: int | None, env: list[str], command: list[str], cwd: str | None, *,
               timeout: float | None) -> int:
    """Start ``n`` ring ranks of ``command`` on 127.0.0.1 and wait for them (see :func:`launch`)."""
    port = free_port_range(n) if port is None else port
    extra = {k: v for k, _, v in (e.partition("=") for e in env)}
    with tempfile.NamedTemporaryFile("w", prefix="mlx_steer_ring_", suffix=".json", delete=False) as f:
        f.write(json.dumps([[f"127.0.0.1:{port + r}"] for r in range(n)]) if n > 1 else "")
    procs: list[subprocess.Popen] = []
    try:
        for rank in range(n):
            rank_env = {**_blas_threads(n), **os.environ, **extra, "MLX_RANK": str(rank), "MLX_HOSTFILE": f.name}
            try:
                procs.append(subprocess.Popen(command, env=rank_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                              start_new_session=True))
            except OSError as exc:
                print(f"[mlx_steer.launch] cannot start {command[0]!r}: {exc}", file=sys.stderr)
                return 127
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                print(f"[mlx_steer.launch] rank {rank} exited with code {code}; stopping the other ranks",
                      file=sys.stderr)
                return code if code > 0 else 1
            if all(c == 0 for c in codes):
                return 0
            if deadline is not None and time.monotonic() > deadline:
                return _timed_out(timeout)
            time.sleep(0.05)
    finally:
        for p in procs:
            _kill_group(p)
        os.unlink(f.name)


def _ranks(opts: list[str]) -> int:
    """How many ranks ``opts`` ask for (1 when they do not parse: mlx.launch then says why)."""
    try:
        return _options().parse_known_args(opts)[0].repeat_hosts
    except SystemExit:
        return 1


def _options() -> argparse.ArgumentParser:
    """The mlx.launch options this launcher reads (others are left to mlx.launch)."""
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ap.add_argument("--backend", default=None)
    ap.add_argument("-n", "--repeat-hosts", type=int, default=1)
    ap.add_argument("-p", "--starting-port", type=int, default=None)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--cwd", default=None)
    ap.add_argument("--verbose", action="store_true")
    return ap


def _timed_out(timeout: float | None) -> int:
    print(f"[mlx_steer.launch] timed out after {timeout:g}s; stopping every rank", file=sys.stderr)
    return 124


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill what is left of ``proc`` and whatever it started (it leads its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("usage: python -m mlx_steer.distributed.launch [--timeout S] [mlx.launch options] -- COMMAND ...")
        return 0
    timeout = None
    if argv[0] == "--timeout":
        timeout, argv = float(argv[1]), argv[2:]
    return launch(argv, timeout=timeout)


if __name__ == "__main__":
    sys.exit(main())
