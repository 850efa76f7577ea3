"""Starts N processes of the project's command lines on this machine as one JAX job.

Each process gets its share of fake CPU devices (XLA_FLAGS, set before JAX starts), gloo CPU
collectives, and the environment variables a SLURM job step sets (`SLURM_NTASKS`,
`SLURM_PROCID`, ...), so `train.py --distributed` / `eval.py --distributed` find the cluster
through `jax.distributed.initialize()`'s auto-detection, as on a real SLURM cluster, with the
coordinator on a free localhost port (`JAX_COORDINATOR_PORT`).

Jobs share compiled programs through JAX's persistent compilation cache. JAX keys a
multi-process program by process and writes it from process 0 only, so in a multi-process job
only process 0 finds its programs there; the training loop compiles the train step ahead of
time and waits for every process before its first collective (`run_io.compile_together`).

Every job has a deadline; a job that misses it, or a process that fails, has all its processes
killed (each runs in its own process group, so grain workers go too) and the error carries the
end of every process's log. A process fails when it exits with a non-zero status or prints a
traceback: after an error, a JAX process waits up to 5 minutes at exit for the others
(`jax.distributed`'s shutdown barrier), so its exit status comes too late to tell.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def job_environment(
    process_id: int, num_processes: int, devices: int, port: int, cache: Path | None
):
    """The environment of process `process_id` of a job."""
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(
        os.environ,
        PYTHONPATH=python_path,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
        )
    if num_processes == 1:
        return env
    return dict(
        env,
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        SLURM_JOB_ID=str(port),
        SLURM_NTASKS=str(num_processes),
        SLURM_PROCID=str(process_id),
        SLURM_LOCALID=str(process_id),
        SLURM_STEP_NODELIST="localhost",
        JAX_COORDINATOR_PORT=str(port),
    )


class JobFailed(AssertionError):
    pass


class Job:
    """N processes of one command line, started together."""

    def __init__(self, argv, *, num_processes: int, devices: int, logs: Path, cache: Path | None):
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.log_paths = [logs / f"process_{i}.log" for i in range(num_processes)]
        self.processes = []
        for index, log_path in enumerate(self.log_paths):
            with open(log_path, "w") as log:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, *argv],
                        cwd=ROOT,
                        env=job_environment(index, num_processes, devices, port, cache),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def logs_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- process {i} ({path}):\n{path.read_text()[-chars:]}"
            for i, path in enumerate(self.log_paths)
        )

    def kill(self):
        """SIGKILL to every process group of the job that is still running."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            process.wait()

    def failed(self) -> bool:
        """Whether a process exited with a non-zero status or printed a traceback."""
        return any(p.poll() not in (None, 0) for p in self.processes) or any(
            "Traceback (most recent call last)" in path.read_text(errors="replace")
            for path in self.log_paths
        )

    def send(self, index: int, signum: int):
        self.processes[index].send_signal(signum)

    def wait(self, timeout: float, *, check: bool = True) -> list:
        """Waits for every process; returns their exit codes.

        Raises:
          JobFailed: the deadline passed, or with `check` a process failed (`failed`); every
            process is killed first.
        """
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.processes):
            if time.monotonic() > deadline:
                self.kill()
                raise JobFailed(f"job not done within {timeout:.0f} s\n{self.logs_tail()}")
            if check and self.failed():
                self.kill()
                raise JobFailed(f"a process failed\n{self.logs_tail()}")
            time.sleep(0.2)
        codes = [p.returncode for p in self.processes]
        if check and any(codes):
            raise JobFailed(f"exit codes {codes}\n{self.logs_tail()}")
        return codes

    def wait_for(self, condition, timeout: float, what: str):
        """Polls `condition()` until true; kills the job when it fails or the deadline passes."""
        deadline = time.monotonic() + timeout
        while not condition():
            if any(p.poll() is not None for p in self.processes) or self.failed():
                self.kill()
                raise JobFailed(f"a process ended before {what}\n{self.logs_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise JobFailed(f"no {what} within {timeout:.0f} s\n{self.logs_tail()}")
            time.sleep(0.05)

    def output(self, index: int) -> str:
        return self.log_paths[index].read_text()
