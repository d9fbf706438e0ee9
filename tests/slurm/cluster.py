"""A real SLURM on this one machine for tests: munged, slurmctld and two slurmd as fake nodes
n1/n2 (NodeAddr=127.0.0.1, ports 17001/17002), with config, state, spool and logs in a temp
dir. Everything is started by us and killed by PID at the end.

Run it by hand to poke at it:  python tests/slurm/cluster.py   (prints SLURM_CONF; Ctrl-C or SIGTERM stops)
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NODES = (("n1", 17001), ("n2", 17002))
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun")


def missing_tools() -> list[str]:
    miss = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    try:
        pwd.getpwnam("munge")
    except KeyError:
        miss.append("user munge")
    return miss


def _which(t: str) -> str:
    return shutil.which(t) or str(Path("/usr/sbin", t))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as slurmd does: TIME_WAIT is fine
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


class LocalSlurm:
    def __init__(self, root: str | None = None, cpus: int | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="hydra-slurm-"))
        self.cpus = cpus or os.cpu_count() or 1
        self.procs: list[subprocess.Popen] = []
        self.pids: list[int] = []
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- set-up ----------------------------------------------------------------------------
    def _munge(self):
        d = self.root / "munge"
        d.mkdir()
        mu = pwd.getpwnam("munge")
        os.chmod(self.root, 0o755)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        for p in (d, key):
            os.chown(p, mu.pw_uid, mu.pw_gid)
        os.chmod(d, 0o755)  # munged refuses a socket folder that is not 755
        os.chmod(key, 0o400)
        self.munge_socket = d / "munge.socket"
        cmd = [_which("munged"), f"--socket={self.munge_socket}", f"--key-file={key}",
               f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}",
               f"--seed-file={d / 'munged.seed'}", "--foreground"]
        self.procs.append(subprocess.Popen(
            cmd, user=mu.pw_uid, group=mu.pw_gid, stdout=subprocess.DEVNULL,
            stderr=open(d / "munged.stderr", "w"), start_new_session=True))
        self._wait_for(lambda: self.munge_socket.exists(), 10, "munged socket")

    def _write_conf(self):
        r = self.root
        for sub in ("state", "spool", "log"):
            (r / sub).mkdir()
        for n, _ in NODES:
            (r / "spool" / n).mkdir()
        self.ctld_port = _free_port()
        nodes = "\n".join(
            f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={p} CPUs={self.cpus} "
            f"State=UNKNOWN" for n, p in NODES)
        names = ",".join(n for n, _ in NODES)
        self.conf.write_text(f"""\
ClusterName=hydratest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}/%n
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd-%n.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SwitchType=switch/none
LaunchParameters=use_interactive_step
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=10
InactiveLimit=0
MessageTimeout=10
{nodes}
PartitionName=test Nodes={names} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> "LocalSlurm":
        try:
            self._munge()
            self._write_conf()
            for _, p in NODES:
                if not _port_free(p):
                    raise RuntimeError(f"slurmd port {p} is in use (another test SLURM running?)")
            self.procs.append(subprocess.Popen(
                [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], env=self.env,
                stdout=subprocess.DEVNULL, stderr=open(self.root / "log" / "slurmctld.stderr", "w"),
                start_new_session=True))
            self._wait_for(lambda: self.run("scontrol", "ping", check=False).returncode == 0
                           and "UP" in self.run("scontrol", "ping", check=False).stdout, 30, "slurmctld")
            for n, _ in NODES:
                self.procs.append(subprocess.Popen(
                    [_which("slurmd"), "-D", "-N", n, "-f", str(self.conf)], env=self.env,
                    stdout=subprocess.DEVNULL, stderr=open(self.root / "log" / f"slurmd-{n}.stderr", "w"),
                    start_new_session=True))
            self._wait_for(self.nodes_idle, 60, "both nodes idle")
        except Exception:
            self.stop()
            raise
        return self

    def nodes_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split("\n")
        states = dict(line.split() for line in out if line.strip())
        return len(states) == len(NODES) and all(s.startswith("idle") for s in states.values())

    def _wait_for(self, cond, timeout: float, what: str):
        t0 = time.time()
        while time.time() - t0 < timeout:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode} while waiting for "
                                       f"{what}; logs in {self.root}")
            if cond():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}; logs in {self.root}")

    # -- use ---------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = 30, env: dict | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(list(cmd), env={**self.env, **(env or {})}, capture_output=True,
                           text=True, timeout=timeout, cwd=cwd)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def job(self, job_id: str) -> dict:
        """scontrol show job as a dict (JobState, Restarts, ...); {} once the job is gone."""
        r = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        if r.returncode != 0:
            return {}
        return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)

    # -- tear-down -------------------------------------------------------------------------
    def cancel_all(self):
        self.run("scancel", "--full", "-u", "root", check=False) if self.procs else None

    def stop(self):
        try:
            if self.conf.exists():
                self.cancel_all()
                time.sleep(0.5)
        except Exception:
            pass
        # Jobs' leftover processes (slurmstepd and what they started) are children of slurmd
        # in their own sessions: kill them by the PIDs slurmd's spool knows, then the daemons.
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self._kill_strays()
        self.procs.clear()

    def _kill_strays(self):
        """Kill any process still running with our SLURM_CONF in its environment (slurmstepd,
        job scripts, training ranks): only ones this fixture's cluster started."""
        me = os.getpid()
        tag = f"SLURM_CONF={self.conf}".encode()
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit() or int(pid_dir.name) == me:
                continue
            try:
                envb = (pid_dir / "environ").read_bytes()
                cmdline = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if tag in envb.split(b"\0") or str(self.conf).encode() in cmdline:
                try:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass


if __name__ == "__main__":
    s = LocalSlurm().start()
    print(f"export SLURM_CONF={s.conf}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        s.stop()
