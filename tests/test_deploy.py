"""deploy/: the launcher, the certificates, the unit files and manifests, TLS end
to end, and a security audit of the job/preset/catalog handling.

Docker, Kubernetes and Slurm/PBS are not available here: their files are
checked for structure only (they parse, and name what the farm needs: GPU
reservations, ``--resources GPU=1``, the shared /data volume). The launcher
and TLS are exercised for real (``integration``): ``deploy/make-certs.sh``
makes a CA and certificates, ``deploy/launch.sh`` starts a TLS scheduler on
127.0.0.1 and a CPU worker, and ``farm render --scheduler tls://...`` renders a
two-track catalog through them; a plain ``tcp://`` client and a client with a
certificate from another CA are refused.
"""
from __future__ import annotations

import configparser
import csv
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest
import soundfile as sf
import yaml

from farm.cluster import WORKER_MALLOC_ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")
LAUNCH = os.path.join(DEPLOY, "launch.sh")
MAKE_CERTS = os.path.join(DEPLOY, "make-certs.sh")
BIN = os.path.dirname(sys.executable)
VENV = os.path.dirname(BIN)
FARM = os.path.join(BIN, "farm")
START_TIMEOUT_S = 90  # a loaded 2-core CI machine can take a while to import distributed
CLI_TIMEOUT_S = 240


def _load_yaml_docs(rel: str) -> list:
    with open(os.path.join(DEPLOY, rel), encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _env(**extra: str) -> dict[str, str]:
    """This checkout's farm/kernels first on the path (for the CLI and the workers),
    the launcher pointed at this virtualenv, no TLS settings inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_DISTRIBUTED__COMM__TLS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.path.join(REPO, "tests"), env.get("PYTHONPATH", ""))
                                        if p)
    env["FARM_VENV"] = VENV
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("FARM_TLS_DIR", None)
    env.pop("FARM_SCHEDULER", None)
    env.pop("FARM_PRESET_PATH", None)
    env.update(extra)
    return env


def launch_print(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``launch.sh print ...``: the command(s) the launcher would exec."""
    return subprocess.run([LAUNCH, "print", *args], env=_env(**env), capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- static checks

def test_scripts_are_valid_bash_and_python():
    for script in (LAUNCH, MAKE_CERTS):
        assert os.access(script, os.X_OK), script
        p = subprocess.run(["bash", "-n", script], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, (script, p.stderr)
    hpc = os.path.join(DEPLOY, "hpc", "jobqueue_cluster.py")
    with open(hpc, encoding="utf-8") as f:
        compile(f.read(), hpc, "exec")  # syntax only: this runs nothing


def test_compose_has_a_scheduler_and_gpu_workers_sharing_data():
    [doc] = _load_yaml_docs("docker/compose.yaml")
    services = doc["services"]
    assert {"scheduler", "worker"} <= set(services)
    sched, worker = services["scheduler"], services["worker"]
    assert sched["command"][0] == "scheduler" and "--host" in sched["command"]
    assert worker["command"][:2] == ["workers", "tcp://scheduler:8786"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    for svc in (sched, worker):
        targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in svc["volumes"]]
        assert "/data" in targets, svc
        build = svc["build"]
        compose_dir = os.path.join(DEPLOY, "docker")
        assert os.path.isfile(os.path.join(compose_dir, build["context"], build["dockerfile"]))
    # the scheduler is published on the host's loopback only
    assert all(p.startswith("127.0.0.1:") for p in sched["ports"]), sched["ports"]


def test_dockerfile_builds_the_project_with_cupy_on_a_cuda_base():
    with open(os.path.join(DEPLOY, "docker", "Dockerfile"), encoding="utf-8") as f:
        text = f.read()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[\w.\-]+-runtime-", text, re.M)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", text, re.M)
    assert "python3.11" in text and 'pip install -e . "$GPU_EXTRA"' in text
    # the same CuPy major as the gpu extra (the base image brings the CUDA libraries)
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["gpu"]
    wheel = re.search(r"^ARG GPU_EXTRA=(\S+)", text, re.M).group(1)
    assert [wheel] == [e.replace("[ctk]", "") for e in extra], (wheel, extra)
    assert re.search(r'^ENTRYPOINT \["/opt/mastering-farm/deploy/launch.sh"\]', text, re.M)
    for src in re.findall(r"^COPY (\S+) ", text, re.M):  # everything it copies exists in the context
        assert os.path.exists(os.path.join(REPO, src)), src


def test_daskcluster_asks_each_worker_for_one_gpu_and_shares_a_pvc():
    docs = _load_yaml_docs("k8s/daskcluster.yaml")
    [cluster] = [d for d in docs if d["kind"] == "DaskCluster"]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    wspec = cluster["spec"]["worker"]["spec"]
    [worker] = wspec["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    argv = worker.get("command", []) + worker["args"]
    i = argv.index("--resources")
    assert argv[i + 1] == "GPU=1"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in wspec["volumes"]
              if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    assert "/data" in mounts and mounts["/data"] in claims
    [pvc] = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == claims[mounts["/data"]]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    sched = cluster["spec"]["scheduler"]
    assert sched["service"]["type"] == "ClusterIP"
    assert 8786 in [p["port"] for p in sched["service"]["ports"]]
    assert sched["spec"]["containers"][0]["args"][0] == "scheduler"


def _unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # systemd keys are case-sensitive
    with open(os.path.join(DEPLOY, "systemd", name), encoding="utf-8") as f:
        cp.read_file(f)
    return cp


def test_systemd_units_run_launch_sh_with_an_environment_file():
    with open(os.path.join(DEPLOY, "systemd", "farm.env.example"), encoding="utf-8") as f:
        defined = {line.split("=", 1)[0] for line in f if re.match(r"^[A-Z_]+=", line)}
    for name, mode in (("farm-scheduler.service", "scheduler"), ("farm-worker@.service", "workers")):
        unit = _unit(name)
        assert {"Unit", "Service", "Install"} <= set(unit.sections()), name
        svc = unit["Service"]
        argv = svc["ExecStart"].split()
        assert argv[0].startswith("/") and argv[0].endswith("/deploy/launch.sh") and argv[1] == mode, argv
        assert svc["Restart"] == "on-failure" and svc["EnvironmentFile"].startswith("/")
        used = set(re.findall(r"\$\{?([A-Z_]+)\}?", svc["ExecStart"]))
        assert used <= defined, (name, used - defined)
    assert "--device %i" in _unit("farm-worker@.service")["Service"]["ExecStart"]


# ---------------------------------------------------------------- the launcher's commands

def test_scheduler_binds_loopback_unless_told_otherwise():
    p = launch_print("scheduler")
    assert p.returncode == 0, p.stderr
    argv = shlex.split(p.stdout)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--dashboard-address") + 1] == "127.0.0.1:8787"
    assert argv[argv.index("--port") + 1] == "8786"
    p = launch_print("scheduler", "--host", "0.0.0.0", "--port", "9000")
    argv = shlex.split(p.stdout)
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "9000"


def test_one_pinned_gpu_worker_per_visible_gpu(tmp_path):
    p = launch_print("workers", "tcp://10.0.0.5:8786", "--nthreads", "2", CUDA_VISIBLE_DEVICES="2,5")
    assert p.returncode == 0, p.stderr
    lines = [shlex.split(line) for line in p.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    for argv, pinned in zip(lines, ("2,5", "5,2")):
        assert f"CUDA_VISIBLE_DEVICES={pinned}" in argv, argv  # each worker's own GPU is its device 0
        assert argv[argv.index("worker") + 1] == "tcp://10.0.0.5:8786"
        assert argv[argv.index("--resources") + 1] == "GPU=1"
        assert argv[argv.index("--nthreads") + 1] == "2"
    # what farm-worker@3.service runs: one worker, device 3 only
    p = launch_print("workers", "tcp://10.0.0.5:8786", "--device", "3")
    [argv] = [shlex.split(line) for line in p.stdout.splitlines() if line.strip()]
    assert "CUDA_VISIBLE_DEVICES=3" in argv and argv[argv.index("--resources") + 1] == "GPU=1"
    # --gpus auto without CUDA_VISIBLE_DEVICES asks nvidia-smi -L (a stand-in here)
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    path = f"{fake}{os.pathsep}{os.environ.get('PATH', '')}"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-b)'\n")
    smi.chmod(0o755)
    p = launch_print("workers", "tcp://10.0.0.5:8786", PATH=path, CUDA_VISIBLE_DEVICES="")
    lines = [shlex.split(line) for line in p.stdout.splitlines() if line.strip()]
    assert [[a for a in argv if a.startswith("CUDA_VISIBLE_DEVICES=")] for argv in lines] == \
        [["CUDA_VISIBLE_DEVICES=0,1"], ["CUDA_VISIBLE_DEVICES=1,0"]], p.stdout + p.stderr
    # ... and without any GPU (nvidia-smi fails, as it does without a driver): CPU workers
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    p = launch_print("workers", "tcp://10.0.0.5:8786", PATH=path, CUDA_VISIBLE_DEVICES="")
    assert p.returncode == 0, p.stderr
    argv = shlex.split(p.stdout)
    assert "--resources" not in argv and argv[argv.index("--nthreads") + 1] == "1"
    assert argv[argv.index("--nworkers") + 1] == str(len(os.sched_getaffinity(0)))


def test_cpu_workers_and_usage_errors():
    p = launch_print("workers", "tcp://h:8786", "--cpu", "2", "--host", "127.0.0.1")
    argv = shlex.split(p.stdout)
    assert argv[argv.index("--nworkers") + 1] == "2" and argv[argv.index("--nthreads") + 1] == "1"
    assert any(a.startswith("FARM_FFT_WORKERS=") for a in argv) and "--resources" not in argv
    assert argv[argv.index("--dashboard-address") + 1] == "127.0.0.1:0"
    # the workers' malloc is tuned as the embedded cluster's, with the same values
    assert {f"{k}={v}" for k, v in WORKER_MALLOC_ENV.items()} <= set(argv)
    with open(os.path.join(DEPLOY, "k8s", "daskcluster.yaml"), encoding="utf-8") as f:
        docs = list(yaml.safe_load_all(f))

    def envs(node):  # every container env list in the manifests
        if isinstance(node, dict):
            if isinstance(node.get("env"), list):
                yield {e["name"]: e.get("value") for e in node["env"]}
            for v in node.values():
                yield from envs(v)
        elif isinstance(node, list):
            for v in node:
                yield from envs(v)

    workers = [e for e in envs(docs) if "FARM_FFT_WORKERS" in e]
    assert workers and all(WORKER_MALLOC_ENV.items() <= e.items() for e in workers)
    for args, message in ((("workers", "tls://h:8786", "--cpu", "1"), "give --tls DIR"),
                          (("workers", "tcp://h:8786", "--cpu", "1", "--tls", "/nonexistent"), "needs a tls://"),
                          (("workers", "tls://h:8786", "--cpu", "1", "--tls", "/nonexistent"), "cannot read"),
                          (("workers", "tcp://h:8786", "--gpus", "3", "--device", "x"), "--device must be"),
                          (("workers",), "give the scheduler ADDRESS"),
                          (("bogus",), "unknown mode")):
        p = launch_print(*args, CUDA_VISIBLE_DEVICES="")
        assert p.returncode == 2 and message in p.stderr, (args, p.stdout, p.stderr)
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        p = launch_print("workers", "tcp://h:8786", "--dask-cuda", CUDA_VISIBLE_DEVICES="0")
        assert p.returncode == 2 and "dask-cuda is not installed" in p.stderr, p.stderr


def test_jobqueue_example_says_how_to_install_dask_jobqueue():
    try:
        import dask_jobqueue  # noqa: F401
        pytest.skip("dask-jobqueue is installed here")
    except ImportError:
        pass
    p = subprocess.run([sys.executable, os.path.join(DEPLOY, "hpc", "jobqueue_cluster.py"), "--jobs", "1"],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "pip install dask-jobqueue" in p.stderr, p.stderr


# ---------------------------------------------------------------- certificates

def make_certs(directory, *hosts: str) -> str:
    p = subprocess.run([MAKE_CERTS, str(directory), *hosts], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return str(directory)


def test_make_certs_signs_every_role_with_one_ca(tmp_path):
    d = make_certs(tmp_path / "tls", "farm-head", "10.1.2.3")
    for role in ("scheduler", "worker", "client"):
        cert = os.path.join(d, f"{role}.pem")
        v = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(d, "ca.pem"), cert],
                           capture_output=True, text=True, timeout=30)
        assert v.returncode == 0, v.stderr
        text = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-text"], capture_output=True,
                              text=True, timeout=30, check=True).stdout
        for san in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:farm-head", "IP Address:10.1.2.3"):
            assert san in text, (role, san)
        assert stat.S_IMODE(os.stat(os.path.join(d, f"{role}-key.pem")).st_mode) == 0o600
    again = subprocess.run([MAKE_CERTS, d], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "FORCE=1" in again.stderr  # never overwrites certificates silently


# ---------------------------------------------------------------- security audit

AUDITED = ("farm/job.py", "farm/presets.py", "farm/catalog.py", "farm/naming.py")
# Anything that could run code or build arbitrary objects from what a user wrote
# (job/preset TOML, catalog CSV/JSON, naming patterns): these names anywhere ...
FORBIDDEN_NAMES = re.compile(r"\b(?:literal_eval|pickle|cPickle|cloudpickle|dill|marshal|shelve|jsonpickle|yaml"
                             r"|importlib|subprocess|__import__)\b|\bos\.(?:system|popen)\b")
# ... and these builtins called (``re.compile(`` is a method: the lookbehind skips it).
FORBIDDEN_CALLS = re.compile(r"(?<![.\w])(?:eval|exec|compile|execfile)\s*\(")


def audit(text: str) -> list[str]:
    """The lines of ``text`` (code, comments and docstrings alike: a plain grep)
    that name a forbidden module or call a forbidden builtin."""
    return [line.strip() for line in text.splitlines()
            if FORBIDDEN_NAMES.search(line) or FORBIDDEN_CALLS.search(line)]


def test_audit_pattern_catches_what_it_should():
    bad = ["x = eval(s)", "exec (code)", "import pickle", "yaml.load(f)", "from ast import literal_eval",
           "ast.literal_eval(v)", "__import__(name)", "os.system(cmd)", "compile(src, 'f', 'exec')"]
    assert [audit(b) for b in bad] == [[b] for b in bad]
    assert audit("NAME_RE = re.compile(r'x')\nevaluate(x)\nexecutor = 1") == []


def test_job_preset_catalog_and_naming_never_evaluate_user_input():
    for rel in AUDITED:
        with open(os.path.join(REPO, rel), encoding="utf-8") as f:
            hits = audit(f.read())
        assert hits == [], f"{rel} uses {hits}: user input must only be parsed (tomllib, csv, json), never evaluated"


# ---------------------------------------------------------------- TLS end to end

def _wait_for_file(path: str, proc: subprocess.Popen, log: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    raise TimeoutError(f"{path} did not appear in {timeout} s:\n{_tail(log)}")


def _tail(log: str, n: int = 4000) -> str:
    try:
        with open(log, "rb") as f:
            return f.read().decode(errors="replace")[-n:]
    except FileNotFoundError:
        return ""


class Launched:
    """Processes started through deploy/launch.sh, each in its own session, so
    that teardown signals exactly the process groups it started."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        try:
            proc = subprocess.Popen([LAUNCH, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=_env(), cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return os.path.join(self.workdir, f"{name}.log")

    def close(self) -> None:
        for name in [n for n in self.procs if n != "scheduler"] + ["scheduler"]:  # workers first
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue


def _security(d: str, role: str = "client"):
    from distributed.security import Security

    return Security(tls_ca_file=os.path.join(d, "ca.pem"), tls_client_cert=os.path.join(d, f"{role}.pem"),
                    tls_client_key=os.path.join(d, f"{role}-key.pem"), require_encryption=True)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A TLS scheduler (launched without --host) and one CPU worker, both via launch.sh."""
    from distributed import Client

    root = tmp_path_factory.mktemp("tls-cluster")
    certs = make_certs(root / "certs")
    procs = Launched(str(root))
    try:
        sched = procs.start("scheduler", "scheduler", "--port", "0", "--dashboard-port", "0", "--no-dashboard",
                            "--tls", certs, "--scheduler-file", str(root / "scheduler.json"))
        address = _wait_for_file(str(root / "scheduler.json"), sched, procs.log("scheduler"),
                                 START_TIMEOUT_S)["address"]
        assert address.startswith("tls://127.0.0.1:"), address
        procs.start("worker", "workers", address, "--cpu", "1", "--host", "127.0.0.1", "--tls", certs,
                    "--", "--death-timeout", "60", "--local-directory", str(root / "worker"), "--name", "w-tls")
        with Client(address, security=_security(certs), timeout=START_TIMEOUT_S, set_as_default=False) as client:
            try:
                client.wait_for_workers(1, timeout=START_TIMEOUT_S)
            except TimeoutError:
                raise TimeoutError(f"the worker did not connect:\n{_tail(procs.log('worker'))}") from None
        yield procs, address, certs
    finally:
        procs.close()


@pytest.fixture(scope="module")
def tiny_catalog(tmp_path_factory):
    from farm.synth import music

    root = tmp_path_factory.mktemp("tiny")
    rows = []
    for i in (1, 2):
        x = music(3.0, 44100, channels=2, seed=40 + i)
        sf.write(str(root / f"t{i}.wav"), np.ascontiguousarray(x.T), 44100, subtype="PCM_16")
        rows.append({"File": f"t{i}.wav", "Title": f"Tiny {i}", "Artist": "Deploy Test", "Track Number": str(i)})
    with open(root / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def farm_render(catalog_dir, out: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FARM, "render", "catalog.csv", "--preset", "streaming", "-o", out, "--no-progress",
                           *extra], cwd=catalog_dir, env=env or _env(), capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL)


def _check_masters(out_dir, address: str) -> None:
    import pyloudnorm

    from kernels import loudness

    with open(os.path.join(out_dir, "report.json"), encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["job"]["scheduler"] == address and doc["job"]["cluster"]["address"] == address
    assert [w["name"] for w in doc["job"]["cluster"]["workers"]] == ["w-tls"]
    assert [t["verdict"] for t in doc["tracks"]] == ["pass", "pass"], doc["tracks"]
    for t in doc["tracks"]:
        path = t["output"]
        assert os.path.isfile(path) and path.endswith(".flac"), path
        data, rate = sf.read(path, dtype="float64", always_2d=True)
        assert rate == 44100 and data.shape == (3 * 44100, 2)
        x = np.ascontiguousarray(data.T)
        assert abs(pyloudnorm.Meter(rate).integrated_loudness(data) - -14.0) <= 1.0, path
        assert loudness.true_peak_dbtp(x, 4) <= -1.0, path


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_render_through_a_tls_scheduler_started_by_launch_sh(tls_cluster, tiny_catalog):
    procs, address, certs = tls_cluster
    flags = ["--tls-ca-file", os.path.join(certs, "ca.pem"), "--tls-cert", os.path.join(certs, "client.pem"),
             "--tls-key", os.path.join(certs, "client-key.pem")]
    run = farm_render(tiny_catalog, "out-flags", "--scheduler", address, *flags)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert f"Dask scheduler {address}: 1 workers" in run.stderr
    _check_masters(tiny_catalog / "out-flags", address)
    # The same with Dask's own TLS configuration (environment) instead of the flags.
    env = _env(DASK_DISTRIBUTED__COMM__TLS__CA_FILE=os.path.join(certs, "ca.pem"),
               DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=os.path.join(certs, "client.pem"),
               DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=os.path.join(certs, "client-key.pem"))
    run = farm_render(tiny_catalog, "out-env", "--scheduler", address, env=env)
    assert run.returncode == 0, (run.stdout, run.stderr)
    _check_masters(tiny_catalog / "out-env", address)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_tls_scheduler_refuses_plain_tcp_and_strangers(tls_cluster, tiny_catalog, tmp_path):
    procs, address, certs = tls_cluster
    port = address.rsplit(":", 1)[1]
    # plain tcp:// to the TLS port: refused, exit 2 with the "cannot reach" message
    t0 = time.monotonic()
    run = farm_render(tiny_catalog, str(tmp_path / "o1"), "--scheduler", f"tcp://127.0.0.1:{port}")
    assert run.returncode == 2 and "cannot reach the Dask scheduler" in run.stderr, run.stderr
    assert time.monotonic() - t0 < 120
    # tls:// without any client certificate: said up front, no connection attempted
    run = farm_render(tiny_catalog, str(tmp_path / "o2"), "--scheduler", address)
    assert run.returncode == 2 and "no TLS certificates are configured" in run.stderr, run.stderr
    # a client certificate signed by another CA: the scheduler refuses the handshake
    other = make_certs(tmp_path / "other")
    run = farm_render(tiny_catalog, str(tmp_path / "o3"), "--scheduler", address,
                      "--tls-ca-file", os.path.join(other, "ca.pem"), "--tls-cert", os.path.join(other, "client.pem"),
                      "--tls-key", os.path.join(other, "client-key.pem"))
    assert run.returncode == 2 and "cannot reach the Dask scheduler" in run.stderr, run.stderr
    # TLS flags with a tcp:// scheduler, or without one: a usage error before anything starts
    run = farm_render(tiny_catalog, str(tmp_path / "o4"), "--scheduler", f"tcp://127.0.0.1:{port}",
                      "--tls-ca-file", os.path.join(certs, "ca.pem"), "--tls-cert", os.path.join(certs, "client.pem"))
    assert run.returncode == 2 and "is not a tls:// address" in run.stderr, run.stderr
    for o in ("o1", "o2", "o3", "o4"):
        assert not any(n.endswith(".flac") for n in os.listdir(tmp_path / o)) if (tmp_path / o).exists() else True
    assert procs.procs["scheduler"].poll() is None  # none of that hurt the scheduler


@pytest.mark.integration
def test_launched_scheduler_and_worker_listen_on_loopback_only(tls_cluster):
    import psutil

    procs, address, _ = tls_cluster
    sched = psutil.Process(procs.procs["scheduler"].pid)  # launch.sh exec'd the dask scheduler itself
    assert "scheduler" in sched.cmdline()
    listening = [c.laddr for c in sched.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert int(address.rsplit(":", 1)[1]) in [a.port for a in listening]
    assert len(listening) >= 2  # the comm port and the HTTP (health/metrics) port
    assert {a.ip for a in listening} == {"127.0.0.1"}, listening
    worker = psutil.Process(procs.procs["worker"].pid)
    tree = [worker, *worker.children(recursive=True)]
    wl = [c.laddr for p in tree for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert wl and {a.ip for a in wl} == {"127.0.0.1"}, wl


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_several_gpus_one_pinned_worker_each_and_sigterm_stops_them_all(tls_cluster, tmp_path):
    """The launcher's own supervision: two (pretend) GPUs, two `dask worker`
    processes under one launch.sh; SIGTERM to the launcher stops both. Runs
    last in this module: its GPU workers are gone again when it ends."""
    from distributed import Client

    import dask_procs

    _, address, certs = tls_cluster
    procs = Launched(str(tmp_path))
    with open(procs.log("gpus"), "wb") as log:
        proc = subprocess.Popen([LAUNCH, "workers", address, "--tls", certs, "--host", "127.0.0.1", "--nthreads", "1",
                                 "--name", "fake", "--", "--death-timeout", "60", "--no-nanny",
                                 "--local-directory", str(tmp_path / "w")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_env(CUDA_VISIBLE_DEVICES="0,1"), cwd=tmp_path, start_new_session=True)
    try:
        with Client(address, security=_security(certs), timeout=START_TIMEOUT_S, set_as_default=False) as client:
            try:
                client.wait_for_workers(3, timeout=START_TIMEOUT_S)
            except TimeoutError:
                raise TimeoutError(f"GPU workers did not connect:\n{_tail(procs.log('gpus'))}") from None
            workers = client.scheduler_info(n_workers=-1)["workers"]
            gpu = {a: w for a, w in workers.items() if w.get("resources", {}).get("GPU") == 1}
            assert sorted(w["name"] for w in gpu.values()) == ["fake-0", "fake-1"], workers
            seen = client.run(dask_procs.env_var, "CUDA_VISIBLE_DEVICES", workers=list(gpu))
            assert sorted(seen.values()) == ["0,1", "1,0"], seen
            os.kill(proc.pid, signal.SIGTERM)  # the launcher only: it must stop its workers itself
            assert proc.wait(60) == 143, _tail(procs.log("gpus"))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and set(gpu) & set(client.scheduler_info(n_workers=-1)["workers"]):
                time.sleep(0.1)
            assert not set(gpu) & set(client.scheduler_info(n_workers=-1)["workers"])
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of that group still alive (nothing, normally)
        except ProcessLookupError:
            pass
        proc.wait(10)
