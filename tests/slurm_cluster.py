"""A real one-node SLURM cluster for the tests: Debian's slurm-wlm, slurmdbd and munge, started in a temp dir.

`slurm_cluster` (session-scoped) writes slurm.conf for this host (its name, CPUs and memory),
starts munged, MariaDB + slurmdbd (accounting: submitit watches a job's state with `sacct`, so
without it a job that ends without a result, scancel'd or killed, would look unfinished
forever), slurmctld and slurmd, waits for `sinfo` to show the node idle, and stops exactly the
daemons it started. Every port is picked free, so two pytest workers may each run a cluster.
Jobs find the cluster through SLURM_CONF, which the fixture sets for the test session.

The tests need root (slurmd starts jobs as their user) and the packages:
`apt-get install -y slurm-wlm slurmdbd munge mariadb-server` (.ci/run installs them).
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BINARIES = ("munged", "mariadb-install-db", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacctmgr")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
ACCOUNT = "pricer"  # the account jobs run under (AccountingStorageEnforce: an unknown one is refused)
PARTITION = "debug"


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if _which(name) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return total_kb // 1024 - 1024  # leave 1 GiB to the system, as slurmd would refuse more than it sees


@dataclass
class SlurmCluster:
    """The running cluster: its conf dir, the env its clients need, and the daemons this fixture started."""

    root: Path
    node: str = field(default_factory=socket.gethostname)
    cpus: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    memory_mb: int = field(default_factory=_memory_mb)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    startup_s: float = 0.0

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A SLURM client command (sinfo, squeue, scontrol, ...) against this cluster."""
        return subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True,
                              check=check, timeout=timeout)

    def start(self) -> "SlurmCluster":
        began = time.monotonic()
        for name in ("state", "spool", "mysql", "log"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        ports = {k: _free_port() for k in ("ctld", "slurmd", "dbd", "mysql")}
        self._start_munge()
        self._start_mariadb(ports["mysql"])
        self._write_confs(ports)
        self._daemon("slurmdbd", [_which("slurmdbd"), "-D"])
        self._wait(lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0, "slurmdbd", 60)
        self.run("sacctmgr", "-i", "add", "cluster", "pricer", check=False)
        self.run("sacctmgr", "-i", "add", "account", ACCOUNT, "Description=tests", "Organization=pricer")
        self.run("sacctmgr", "-i", "add", "user", os.environ.get("USER", "root") if os.geteuid() else "root",
                 f"Account={ACCOUNT}", f"DefaultAccount={ACCOUNT}")
        self._daemon("slurmctld", [_which("slurmctld"), "-D", "-i"])
        self._daemon("slurmd", [_which("slurmd"), "-D", "-N", self.node])
        self._wait(self._node_idle, "the node to be idle in sinfo", 90)
        self.startup_s = time.monotonic() - began
        return self

    def _start_munge(self) -> None:
        key = self.root / "munge.key"
        if Path("/etc/munge/munge.key").exists():
            shutil.copy("/etc/munge/munge.key", key)
        else:
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = self.root / "munge.socket"
        self._daemon("munged", [_which("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                                f"--pid-file={self.root / 'munged.pid'}", f"--log-file={self.root / 'log/munged.log'}",
                                f"--seed-file={self.root / 'munged.seed'}"])
        self._wait(sock.exists, "munged's socket", 30)

    def _start_mariadb(self, port: int) -> None:
        data = self.root / "mysql"
        subprocess.run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root",
                        "--skip-test-db", "--auth-root-authentication-method=normal"],
                       check=True, capture_output=True, timeout=120)
        self._daemon("mariadbd", [_which("mariadbd"), "--no-defaults", f"--datadir={data}", f"--port={port}",
                                  "--bind-address=127.0.0.1", f"--socket={self.root / 'mysql.sock'}", "--user=root",
                                  "--skip-grant-tables", "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
                                  f"--pid-file={self.root / 'mysql.pid'}", "--innodb-lock-wait-timeout=900"])
        self._wait(lambda: _port_open(port), "MariaDB", 60)

    def _write_confs(self, ports: dict[str, int]) -> None:
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.root / 'munge.socket'}\n"
        self.conf.write_text(f"""\
ClusterName=pricer
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ports['ctld']}
SlurmdPort={ports['slurmd']}
{auth}CredType=cred/munge
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'slurmd.pid'}
SlurmctldLogFile={self.root / 'log/slurmctld.log'}
SlurmdLogFile={self.root / 'log/slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobRequeue=1
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports['dbd']}
AccountingStoragePass={self.root / 'munge.socket'}
AccountingStorageEnforce=associations
PlugStackConfig={self.root / 'plugstack.conf'}
KillWait=30
InactiveLimit=0
MinJobAge=300
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        (self.root / "plugstack.conf").write_text("")
        dbd = self.root / "slurmdbd.conf"
        dbd.write_text(f"""\
{auth}DbdHost={self.node}
DbdAddr=127.0.0.1
DbdPort={ports['dbd']}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports['mysql']}
StorageUser=root
StorageLoc=slurm_acct_db
PidFile={self.root / 'slurmdbd.pid'}
LogFile={self.root / 'log/slurmdbd.log'}
""")
        dbd.chmod(0o600)

    def _daemon(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"SLURM test cluster: waited for {what}; {'exited: ' + ', '.join(dead) if dead else 'timed out'}"
                                   f"\n{self.logs()}")
            time.sleep(0.2)

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def logs(self) -> str:
        """The daemons' logs, last lines: what a failing test prints."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the daemons this cluster started, newest first; jobs of slurmd end with it."""
        self.run("scancel", "--full", "-u", "root", check=False, timeout=30)
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
        self.procs.clear()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The one-node cluster, for the whole session; SLURM_CONF points every client (and job) at it."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): "
                    "apt-get install -y slurm-wlm slurmdbd munge mariadb-server")
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (slurmd starts jobs as their user)")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    previous = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        cluster.stop()
