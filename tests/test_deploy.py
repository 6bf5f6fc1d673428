"""deploy/: files parse, images are pinned, and names, ports, flags and settings agree across files."""

import argparse
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from detector.metric import COUNTERS, GAUGES, HISTOGRAMS
from ganwatch.settings import Settings, add_serve_arguments
from ganwatch.simulator import CHANNELS, simulate

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DEFAULT_METRICS_PORT = Settings.model_fields["metrics_port"].default

# contract flags of the commands deploy/ runs (serve is checked with the real argument parser)
TRAIN_FLAGS = {"--data", "--out", "--sep", "--timestamp-column", "--channels", "--exclude-columns",
               "--train-rows", "--window", "--epochs", "--model", "--device", "--seed",
               "--batch-size", "--hidden", "--latent", "--lr", "--no-progress"}
TRAIN_REQUIRED = {"--data", "--out"}
REPLAY_FLAGS = {"--data", "--bootstrap-servers", "--topic", "--entity", "--timestamp-column",
                "--channels", "--exclude-columns", "--sep", "--rate", "--speedup", "--ts-format",
                "--limit", "--no-progress"}
REPLAY_REQUIRED = {"--data", "--bootstrap-servers", "--topic", "--entity"}
METRICS = {"ganwatch_" + n for n in (*COUNTERS, *HISTOGRAMS, *GAUGES)}
DASHBOARD_METRICS = {
    "ganwatch_readings_total", "ganwatch_dead_letters_total", "ganwatch_duplicates_total",
    "ganwatch_gaps_total", "ganwatch_windows_scored_total", "ganwatch_alerts_total",
    "ganwatch_batch_size", "ganwatch_scoring_seconds", "ganwatch_event_to_alert_seconds",
    "ganwatch_consumer_lag", "ganwatch_ready"}


def load_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with no VAR set."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


COMPOSE = load_docs(DEPLOY / "docker-compose.yml")[0]
SERVICES = COMPOSE["services"]
K8S_OBJECTS = [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
               for d in load_docs(p)]
KUSTOMIZATION = load_docs(K8S / "kustomization.yaml")[0]


def k8s(kind: str, name: str | None = None) -> dict:
    found = [o for o in K8S_OBJECTS if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) >= 1, f"no {kind} {name or ''} in deploy/k8s"
    return found[0]


def resources() -> list[dict]:
    return [o for p in KUSTOMIZATION["resources"] for o in load_docs(K8S / p)]


CONFIG = k8s("ConfigMap", "ganwatch-config")["data"]
SECRET = k8s("Secret", "ganwatch-secrets")["stringData"]
DEPLOYMENT = k8s("Deployment", "ganwatch-worker")
TOPICS_JOB = k8s("Job", "ganwatch-topics")
TRAIN_JOB = k8s("Job", "ganwatch-train")


def pod(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def container_args(c: dict) -> list[str]:
    return [*c.get("command", []), *c.get("args", [])]


def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name.endswith(suffixes))


@pytest.mark.parametrize("path", deploy_files(".yaml", ".yml", ".json"), ids=lambda p: p.name)
def test_every_yaml_and_json_file_parses(path):
    data = json.loads(path.read_text()) if path.suffix == ".json" else load_docs(path)
    assert data


def images() -> list[str]:
    found = [s["image"] for s in SERVICES.values() if "image" in s]
    for obj in K8S_OBJECTS:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        found += [c["image"] for c in spec.get("containers", []) + spec.get("initContainers", [])
                  if "image" in c]
    found += re.findall(r"^FROM\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    found += [f"{i['newName']}:{i['newTag']}" for i in KUSTOMIZATION.get("images", [])]
    return found


def test_every_image_is_pinned():
    listed = images()
    assert len(listed) >= 8
    for image in listed:
        name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
        assert "@sha256:" in image or (name and tag and tag != "latest" and "/" not in tag), image


def test_every_ganwatch_variable_in_deploy_is_a_setting():
    known = Settings.env_names()
    used = {name for p in deploy_files("") for name in
            re.findall(r"\bGANWATCH_[A-Z0-9_]+", p.read_text(errors="replace"))}
    assert {"GANWATCH_MODEL", "GANWATCH_BOOTSTRAP_SERVERS", "GANWATCH_REDIS_PASSWORD"} <= used
    assert used - known == set()


def worker_env() -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in SERVICES["worker"]["environment"].items()}


def test_compose_worker_and_k8s_configmap_make_valid_settings():
    compose = Settings.load({}, worker_env())
    assert compose.bootstrap_servers == "kafka:9092" and compose.redis_password is not None
    cluster = Settings.load({}, {**CONFIG, **SECRET})
    assert cluster.security_protocol == "SASL_SSL" and cluster.sasl_password is not None
    assert cluster.metrics_port == listening_port_of_deployment()


def listening_ports(name: str) -> set[int]:
    service = SERVICES[name]
    ports = {int(p) for p in service.get("expose", [])}
    ports |= {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}
    return ports


def strings(node, skip=("image", "ports")):
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in skip:
                yield from strings(value, skip)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item, skip)
    elif node is not None:
        yield str(node)


HOST_PORT = re.compile(r"(?:^|[\s/@,=\"'])([A-Za-z][A-Za-z0-9_-]*):(\d{2,5})\b")


def test_compose_host_port_references_point_at_listening_services():
    texts = list(strings(SERVICES))
    for extra in ("monitoring/prometheus.yml", "monitoring/grafana/datasource.yml"):
        texts.append((DEPLOY / extra).read_text())
    refs = {(h, int(p)) for text in texts for h, p in HOST_PORT.findall(interpolate(text))}
    assert {("kafka", 9092), ("redis", 6379), ("prometheus", 9090)} <= refs
    for host, port in refs:
        if host == "localhost":
            continue
        assert host in SERVICES, f"{host}:{port} names no compose service"
        assert port in listening_ports(host), f"{host} does not listen on {port}"


def test_compose_depends_on_existing_services_with_valid_conditions():
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in SERVICES.items():
        deps = service.get("depends_on", {})
        deps = deps if isinstance(deps, dict) else {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            assert dep in SERVICES and dep != name, f"{name} depends on unknown {dep}"
            assert spec["condition"] in conditions
            if spec["condition"] == "service_healthy":
                check = SERVICES[dep].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{dep} has no healthcheck"


def test_compose_mounts_builds_and_volumes_exist():
    named = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
            else:
                assert source in named, f"{name}: volume {source} not declared"
        if "build" in service:
            build = service["build"]
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def flags(args: list[str]) -> set[str]:
    return {a.split("=")[0] for a in args if a.startswith("--")}


def option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def ganwatch_commands() -> list[tuple[str, list[str]]]:
    found = [(f"compose {n}", list(s["command"])) for n, s in SERVICES.items()
             if s.get("image", "").startswith("ganwatch:")]
    for obj in (DEPLOYMENT, TRAIN_JOB):
        found += [(f"k8s {obj['metadata']['name']}", container_args(c)) for c in pod(obj)["containers"]]
    return found


def test_commands_use_contract_flags():
    commands = ganwatch_commands()
    assert {args[0] for _, args in commands} == {"serve", "train", "replay"}
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_serve_arguments(parser)
    for where, args in commands:
        if args[0] == "serve":
            parser.parse_args(args[1:])  # raises on an unknown flag or a missing value
        elif args[0] == "train":
            assert flags(args) <= TRAIN_FLAGS and TRAIN_REQUIRED <= flags(args), where
        else:
            assert flags(args) <= REPLAY_FLAGS and REPLAY_REQUIRED <= flags(args), where


def test_compose_names_agree():
    env = worker_env()
    train, replay = SERVICES["train"]["command"], SERVICES["replay"]["command"]
    assert option(train, "--out") == env["GANWATCH_MODEL"]
    assert option(replay, "--topic") in env["GANWATCH_INPUT_TOPICS"].split(",")
    assert option(replay, "--bootstrap-servers") == env["GANWATCH_BOOTSTRAP_SERVERS"]
    created = set(re.findall(r"--topic (\S+) --partitions \d+", SERVICES["topics"]["command"][0]))
    wanted = {env[k] for k in ("GANWATCH_ALERTS_TOPIC", "GANWATCH_DEAD_LETTER_TOPIC",
                               "GANWATCH_SCORES_TOPIC")}
    assert wanted | set(env["GANWATCH_INPUT_TOPICS"].split(",")) <= created
    assert int(env["GANWATCH_METRICS_PORT"]) in listening_ports("worker")


def test_sample_matches_the_simulator_and_training_uses_its_normal_prefix():
    frame = pd.read_csv(DEPLOY / "sample" / "pump-1.csv")
    expected = simulate(("pump-1",), 3000, seed=7, normal_rows=1800).frames["pump-1"]
    assert list(frame.columns) == list(expected.columns)
    assert np.allclose(frame[list(CHANNELS)].to_numpy(), expected[list(CHANNELS)].to_numpy())
    assert (frame["anomaly"] == expected["anomaly"]).all()
    train = SERVICES["train"]["command"]
    normal = int(option(train, "--train-rows"))
    assert frame["anomaly"].iloc[:normal].sum() == 0 and frame["anomaly"].sum() > 0


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    health = re.search(r"^HEALTHCHECK .*$(?:\n\s+.*)*", text, re.M).group(0)
    assert f"http://127.0.0.1:{DEFAULT_METRICS_PORT}/healthz" in health and "urllib" in health
    assert re.search(r'^ENTRYPOINT \["ganwatch"\]', text, re.M)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)[-1]
    assert user not in ("root", "0")
    assert pod(DEPLOYMENT)["securityContext"]["runAsUser"] == int(user)
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.M)
    assert "--index-url https://download.pytorch.org/whl/${TORCH_VARIANT}" in text
    pin = re.search(r"^torch==(\S+)", (ROOT / "requirements-test.txt").read_text(), re.M).group(1)
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(pin)}$", text, re.M)
    # a worker image: none of the plotting, Parquet or embedded-server extras
    (extras,) = re.findall(r"^ARG EXTRAS=(\S+)$", text, re.M)
    assert 'pip install --constraint requirements-test.txt ".[${EXTRAS}]"' in text
    assert set(extras.split(",")) == {"fast"}
    for line in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for source in shlex.split(line):
            assert (ROOT / source).exists(), f"COPY source {source} missing from the repository"


def test_kustomization_resources_exist():
    for path in KUSTOMIZATION["resources"]:
        assert (K8S / path).is_file()
    unlisted = {p.name for p in K8S.glob("*.yaml")} - set(KUSTOMIZATION["resources"])
    assert unlisted == {"kustomization.yaml", "gpu-patch.yaml"}
    assert "gpu-patch.yaml" in (K8S / "kustomization.yaml").read_text()
    kinds = {o["kind"] for o in resources()}
    assert {"Deployment", "ConfigMap", "Secret", "Service", "Job", "ScaledObject",
            "PersistentVolumeClaim"} <= kinds


def listening_port_of_deployment() -> int:
    (container,) = pod(DEPLOYMENT)["containers"]
    return {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]


def test_deployment_probes_hit_the_metrics_port():
    (container,) = pod(DEPLOYMENT)["containers"]
    port = int(CONFIG.get("GANWATCH_METRICS_PORT", DEFAULT_METRICS_PORT))
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert named.get(get["port"], get["port"]) == port
    assert container["resources"]["requests"] and container["resources"]["limits"]
    refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in container["envFrom"]}
    assert refs == {"ganwatch-config", "ganwatch-secrets"}
    service = k8s("Service")
    assert service["spec"]["selector"].items() <= DEPLOYMENT["spec"]["template"]["metadata"]["labels"].items()
    (svc_port,) = service["spec"]["ports"]
    assert named[svc_port["targetPort"]] == port


def test_artifact_volume_is_shared_between_training_and_workers():
    claim = k8s("PersistentVolumeClaim")["metadata"]["name"]
    mounts = {}
    for obj in (DEPLOYMENT, TRAIN_JOB):
        spec = pod(obj)
        (volume,) = [v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
        (mount,) = [m for c in spec["containers"] for m in c["volumeMounts"] if m["name"] == volume["name"]]
        mounts[obj["kind"]] = mount
    assert mounts["Deployment"].get("readOnly") is True
    assert CONFIG["GANWATCH_MODEL"].startswith(mounts["Deployment"]["mountPath"] + "/")
    (train,) = pod(TRAIN_JOB)["containers"]
    assert option(container_args(train), "--out") == CONFIG["GANWATCH_MODEL"]
    assert option(container_args(train), "--data").startswith(mounts["Job"]["mountPath"] + "/")


def test_training_data_reaches_the_artifact_volume_through_the_job():
    """The workers mount the volume read-only, so the Job's init container receives the file: it
    waits for data/incoming/train.csv, moves it to train's --data, and the README sends it there."""
    spec = pod(TRAIN_JOB)
    (volume,) = [v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    (init,) = spec["initContainers"]
    (mount,) = [m for m in init["volumeMounts"] if m["name"] == volume]
    assert not mount.get("readOnly") and init["image"] == pod(TRAIN_JOB)["containers"][0]["image"]
    script = init["args"][0]
    data = option(container_args(spec["containers"][0]), "--data")
    incoming = f"{mount['mountPath']}/data/incoming/train.csv"
    assert f"until [ -f {incoming} ]" in script and f"mv {incoming} {data}" in script
    readme = (ROOT / "README.md").read_text()
    step = re.search(r"^7\. \*\*Deploy\*\*(.*?)^8\. ", readme, re.M | re.S).group(1)
    assert f"-c {init['name']} --" in step and "job-name=ganwatch-train" in step
    # the file appears whole: written under another name, then renamed to the awaited one
    assert re.search(rf"cat > (\S+) && mv \1 {re.escape(incoming)}'", step)
    assert TRAIN_JOB["spec"]["activeDeadlineSeconds"] > 0


def test_keda_scales_on_the_worker_group_within_the_partition_count():
    scaled = k8s("ScaledObject")
    (topics,) = pod(TOPICS_JOB)["containers"]
    partitions = int({e["name"]: e["value"] for e in topics["env"]}["PARTITIONS"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= partitions
    assert scaled["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == CONFIG["GANWATCH_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == CONFIG["GANWATCH_GROUP_ID"]
    assert meta["topic"] in CONFIG["GANWATCH_INPUT_TOPICS"].split(",")
    keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert meta["sasl"] == keda_sasl[CONFIG["GANWATCH_SASL_MECHANISM"]]
    assert (meta.get("tls") == "enable") == CONFIG["GANWATCH_SECURITY_PROTOCOL"].endswith("SSL")
    auth = k8s("TriggerAuthentication", trigger["authenticationRef"]["name"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == "ganwatch-secrets" and ref["key"] in SECRET


def test_secret_holds_only_settings_and_placeholders():
    assert set(SECRET) <= Settings.env_names()
    assert {"GANWATCH_SASL_PASSWORD", "GANWATCH_REDIS_PASSWORD"} <= set(SECRET)
    for key, value in SECRET.items():
        if key.endswith("PASSWORD"):
            assert value == "REPLACE-ME"


def test_gpu_patch_requests_a_gpu_and_selects_cuda():
    (patch,) = load_docs(K8S / "gpu-patch.yaml")
    assert patch["metadata"]["name"] == DEPLOYMENT["metadata"]["name"]
    (container,) = pod(patch)["containers"]
    assert container["name"] == pod(DEPLOYMENT)["containers"][0]["name"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert {"name": "GANWATCH_DEVICE", "value": "cuda"} in container["env"]


def test_prometheus_and_grafana_configuration():
    prom = load_docs(DEPLOY / "monitoring" / "prometheus.yml")[0]
    (job,) = prom["scrape_configs"]
    for sd in job["dns_sd_configs"]:
        assert set(sd["names"]) <= set(SERVICES)
        assert all(sd["port"] in listening_ports(n) for n in sd["names"])
    (source,) = load_docs(DEPLOY / "monitoring" / "grafana" / "datasource.yml")[0]["datasources"]
    (provider,) = load_docs(DEPLOY / "monitoring" / "grafana" / "dashboards.yml")[0]["providers"]
    mounts = [v.split(":")[1] for v in SERVICES["grafana"]["volumes"]]
    assert any(m.startswith(provider["options"]["path"] + "/") for m in mounts)
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana" / "ganwatch-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set()
    for expr in exprs:
        for metric in re.findall(r"\bganwatch_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert base in METRICS, f"unknown metric {metric} in dashboard"
            if metric.endswith("_bucket"):
                assert base.removeprefix("ganwatch_") in HISTOGRAMS
            used.add(base)
    assert DASHBOARD_METRICS <= used
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
