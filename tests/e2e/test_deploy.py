"""deploy/: the image's commands on a real sidecar, the health subcommand, the Kubernetes
manifests and compose file against their schemas (offline), and the Grafana dashboard's
queries against what a real sidecar's /metrics exports."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import ROOT, config_dict, free_port, write_config
from tests.e2e import promql_check
from tests.e2e.deploy_files import (
    BIN,
    DEPLOY,
    GRAFANA,
    K8S,
    K8S_VERSIONS,
    arg_value,
    container,
    dockerfile_stages,
    manifests,
    run_cli,
    wait_admin,
    wait_healthy,
    yaml_docs,
)

ROUTER = "routing_sidecar.v1.Router"

# -- the image ------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    out = subprocess.run([str(BIN / "hadolint"), "--no-color", str(DEPLOY / "Dockerfile")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    build, final = dockerfile_stages()
    assert build.base[-2:] == ("AS", "build") and final.base == build.base[:1]
    install = " ".join(c.value[0] for c in build.all("RUN"))
    assert "pip install" in install and "-c constraints.txt" in install
    assert not any("pip install" in c.value[0] for c in final.all("RUN"))
    copied = [c for c in final.all("COPY") if "--from=build" in c.flags]
    assert [c.value for c in copied] == [("/opt/venv", "/opt/venv")]
    ignored = {line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text()
               .splitlines() if line.strip() and not line.startswith("#")}
    for c in build.all("COPY") + [c for c in final.all("COPY") if not c.flags]:
        for src in c.value[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert src not in ignored, f"COPY {src}: left out of the build context"
    uid, _, gid = final.last("USER").value[0].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    assert final.last("VOLUME").value == ("/app/var",)
    assert final.last("WORKDIR").value == ("/app",)
    check = final.last("HEALTHCHECK").value
    assert check[:3] == ("CMD", "routing-sidecar", "health")
    assert final.last("ENTRYPOINT").value == ("routing-sidecar", "serve")


def _tree(root: Path, skip: str) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.relative_to(root).parts[0] != skip}


def test_image_command_serves_and_writes_only_its_state_volume(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD and the HEALTHCHECK, as the image runs them, from an /app copy."""
    final = dockerfile_stages()[-1]
    app = tmp_path / "app"
    for c in final.all("COPY"):
        if not c.flags:  # COPY config ./config: from the build context into WORKDIR /app
            src, dst = c.value
            shutil.copytree(ROOT / src, app / dst)
    (app / "var").mkdir()
    before = _tree(app, skip="var")
    entry, cmd = final.last("ENTRYPOINT").value, list(final.last("CMD").value)
    assert arg_value(cmd, "--listen").startswith("0.0.0.0:")  # published and probed
    assert arg_value(cmd, "--admin-listen").startswith("127.0.0.1:")  # never by default
    target, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    # Ports of our own (argparse keeps the last value): the image's are 0.0.0.0 and shared.
    argv = [str(BIN / entry[0]), *entry[1:], *cmd, "--listen", target, "--admin-listen", admin]
    env = {**os.environ, **{k: v for k, v in final.env().items() if k != "PATH"}}
    log = tmp_path / "sidecar.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, cwd=app, env=env, stdout=sink, stderr=sink)
    try:
        check = final.last("HEALTHCHECK").value[1:]
        ok = wait_healthy(target, proc, command=check[1:])
        assert (ok.returncode, ok.stdout) == (0, f"{target} {ROUTER}: SERVING\n"), ok.stderr
        routed = run_cli("route", "--target", target, "--task-type", "fix_bug", "--json")
        assert json.loads(routed.stdout)["status"] == "DECISION_STATUS_ROUTED", routed.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    down = run_cli(*check[1:], "--target", target)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr
    assert _tree(app, skip="var") == before  # read-only root friendly: nothing else written
    assert (app / "var" / "routing.db").stat().st_size > 0


# -- routing-sidecar health -----------------------------------------------------------------


async def _health(*args: str) -> tuple[int, str, str]:
    # A child process, awaited: the sidecar under test serves on this event loop.
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "routing-sidecar"), "health", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_health_exits_zero_only_when_serving(sidecar: Sidecar) -> None:
    target = sidecar.address
    assert await _health("--target", target) == (0, f'{target} "": SERVING\n', "")
    assert await _health("--target", target, "--service", ROUTER, "--timeout", "5") == (
        0, f"{target} {ROUTER}: SERVING\n", "")
    code, out, err = await _health("--target", target, "--service", "routing_sidecar.v1.Nope")
    assert (code, out) == (1, "") and err.count("\n") == 1 and "NOT_FOUND" in err
    await sidecar.server.health.set(ROUTER, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await _health("--target", target, "--service", ROUTER) == (
        1, f"{target} {ROUTER}: NOT_SERVING\n", "")
    assert (await _health("--target", target))[0] == 0  # the server itself still serves
    nobody = f"127.0.0.1:{free_port()}"
    code, out, err = await _health("--target", nobody, "--timeout", "1")
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f'error: {nobody} "": UNAVAILABLE')
    code, _, err = await _health("--timeout", "0")
    assert code == 2 and "--timeout" in err


# -- Kubernetes -----------------------------------------------------------------------------


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    objects = manifests()
    assert {k for k, _ in objects} == {"ConfigMap", "Pod", "Deployment", "NetworkPolicy",
                                       "Secret"}
    for version in K8S_VERSIONS:
        for doc in objects.values():
            kubernetes_validate.validate(doc, version, strict=True)
    # The validator is live: a misspelt probe field and a wrong type are refused.
    bad = copy.deepcopy(objects["Pod", "orchestrator"])
    car = next(c for c in bad["spec"]["initContainers"] if c["name"] == "routing-sidecar")
    car["readinessProbe"]["grpc"]["servce"] = ROUTER
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)
    bad = copy.deepcopy(objects["Pod", "orchestrator"])
    bad["spec"]["terminationGracePeriodSeconds"] = "30"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_kustomization_renders_valid_objects() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = {}
    for name in kust["resources"]:
        for doc in yaml_docs(K8S / name):
            listed[doc["kind"], doc["metadata"]["name"]] = doc
    assert ("Secret", "routing-sidecar-keys") not in listed  # keys are never applied from here
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for its built-in kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout)}
    assert rendered.keys() == listed.keys()
    for doc in rendered.values():
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    spec = rendered["Deployment", "orchestrator"]["spec"]["template"]["spec"]
    tag = kust["images"][0]["newTag"]
    assert container(spec, "routing-sidecar")["image"] == f"routing-sidecar:{tag}"


def test_pod_and_deployment_share_one_spec() -> None:
    objects = manifests()
    pod, deployment = objects["Pod", "orchestrator"], objects["Deployment", "orchestrator"]
    template = deployment["spec"]["template"]
    assert template["spec"] == pod["spec"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    policy = objects["NetworkPolicy", "orchestrator"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def _router_config(objects: dict[tuple[str, str], dict[str, Any]]) -> Any:
    text = objects["ConfigMap", "routing-sidecar-config"]["data"]["router.yaml"]
    return parse_config(text, "deploy/kubernetes/configmap.yaml:router.yaml")


def test_the_sidecar_container_is_probed_locked_down_and_keeps_admin_local() -> None:
    objects = manifests()
    spec = objects["Pod", "orchestrator"]["spec"]
    cfg = _router_config(objects)  # the sidecar's own loader accepts the ConfigMap's file
    car = container(spec, "routing-sidecar")
    assert car["restartPolicy"] == "Always" and car in spec["initContainers"]
    grpc_port = int(cfg.server.listen.rpartition(":")[2])
    assert [p["containerPort"] for p in car["ports"]] == [grpc_port]
    probes = {k: car[k]["grpc"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {p["port"] for p in probes.values()} == {grpc_port}
    assert probes["livenessProbe"]["service"] == ""
    assert probes["readinessProbe"]["service"] == probes["startupProbe"]["service"] == ROUTER
    assert cfg.server.listen.startswith("0.0.0.0:")  # the kubelet probes the pod IP
    admin = arg_value(car["args"], "--admin-listen")
    assert admin.startswith("127.0.0.1:") and cfg.telemetry.admin_listen.startswith("127.0.0.1:")
    admin_port = int(admin.rpartition(":")[2])
    for c in spec["initContainers"] + spec["containers"]:
        assert admin_port not in [p["containerPort"] for p in c.get("ports", [])]
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsUser"] > 0
    assert spec["securityContext"]["runAsNonRoot"]
    user = dockerfile_stages()[-1].last("USER").value[0].split(":")
    assert [car["securityContext"]["runAsUser"], car["securityContext"]["runAsGroup"]] == [
        int(u) for u in user]
    assert spec["terminationGracePeriodSeconds"] >= cfg.server.grace_period_s + 10
    _check_mounts(spec, car, cfg)


def _check_mounts(spec: dict[str, Any], car: dict[str, Any], cfg: Any) -> None:
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in car["volumeMounts"]}
    assert "emptyDir" in mounts[str(Path(cfg.store.path).parent)]  # the writable state
    assert "emptyDir" in mounts["/tmp"]
    config_path = Path(arg_value(car["args"], "--config"))
    config_volume = mounts[str(config_path.parent)]["configMap"]
    assert config_volume["name"] == "routing-sidecar-config"
    keys = next(v["secret"] for v in volumes.values() if "secret" in v)
    key_dir = next(p for p, v in mounts.items() if v.get("secret") == keys)
    env = {e["name"]: e for e in car["env"]}
    for name, provider in cfg.providers.items():
        if provider.api_key_env:
            ref = env[provider.api_key_env]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == keys["secretName"], name
        if provider.api_key_file:
            assert Path(provider.api_key_file).parent == Path(key_dir), name
    secret = yaml_docs(K8S / "secret.example.yaml")[0]
    wanted = {env[p.api_key_env]["valueFrom"]["secretKeyRef"]["key"]
              for p in cfg.providers.values() if p.api_key_env}
    wanted |= {Path(p.api_key_file).name for p in cfg.providers.values() if p.api_key_file}
    assert set(secret["stringData"]) == wanted
    assert all(v == "" for v in secret["stringData"].values())  # no key is ever committed


def test_the_metrics_agent_scrapes_the_loopback_admin_port() -> None:
    objects = manifests()
    spec = objects["Pod", "orchestrator"]["spec"]
    admin = arg_value(container(spec, "routing-sidecar")["args"], "--admin-listen")
    agent = container(spec, "metrics-agent")
    order = [c["name"] for c in spec["initContainers"]]
    assert order.index("metrics-agent") < order.index("routing-sidecar")  # it stops last
    assert "--agent" in agent["args"] and "ports" not in agent
    assert any(a.startswith("--web.listen-address=127.0.0.1:") for a in agent["args"])
    agent_map = objects["ConfigMap", "routing-sidecar-metrics-agent"]
    conf = yaml.safe_load(agent_map["data"]["agent.yml"])
    assert [t for sc in conf["scrape_configs"] for s in sc["static_configs"]
            for t in s["targets"]] == [admin]
    assert conf["global"]["external_labels"]["pod"] == "${POD_NAME}"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in agent["env"]}
    assert env["POD_NAME"] == "metadata.name"
    orchestrator = container(spec, "orchestrator")
    grpc_port = container(spec, "routing-sidecar")["ports"][0]["containerPort"]
    assert {e["name"]: e["value"] for e in orchestrator["env"]}["ROUTING_SIDECAR_TARGET"] == (
        f"127.0.0.1:{grpc_port}")


# -- compose --------------------------------------------------------------------------------


def _jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60, check=False)


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    out = _jsonschema(DEPLOY / "compose.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    broken = (DEPLOY / "compose.yaml").read_text().replace("service_healthy", "healthy")
    (tmp_path / "compose.yaml").write_text(broken)
    assert _jsonschema(tmp_path / "compose.yaml").returncode == 1  # the schema is enforced


def test_compose_services_wire_up() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"sidecar", "jaeger", "prometheus", "grafana"}
    for name, svc in services.items():
        deps = svc.get("depends_on", [])
        assert set(deps) <= set(services), name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
    sidecar = services["sidecar"]
    assert (DEPLOY / sidecar["build"]["context"] / sidecar["build"]["dockerfile"]).is_file()
    assert sidecar["read_only"] and "sidecar-state:/app/var" in sidecar["volumes"]
    assert services["prometheus"]["depends_on"]["sidecar"]["condition"] == "service_healthy"
    admin_port = arg_value(sidecar["command"], "--admin-listen").rpartition(":")[2]
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    static = scrape[0]["static_configs"][0]
    assert static["targets"] == [f"sidecar:{admin_port}"] and static["labels"]["pod"]
    sources = yaml.safe_load(
        (GRAFANA / "provisioning/datasources/datasources.yaml").read_text())["datasources"]
    prom = next(s for s in sources if s["type"] == "prometheus")
    assert prom["url"] == "http://prometheus:9090" and prom["isDefault"]
    provider = yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/dashboards.yaml").read_text())["providers"][0]
    mounted = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert f"{provider['options']['path']}/routing.json" in mounted


# -- the Grafana dashboard ------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "routing.json").read_text())
    return data


def _targets() -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target


def test_dashboard_layout_variables_and_data_sources() -> None:
    dash = _dashboard()
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
            assert p["description"], p["title"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Overview", "Decisions", "Spend and tokens",
                    "Attempts, fallbacks and errors", "Budgets", "Providers"]
    defined = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "pod", "project"} <= defined
    for title, target in _targets():
        assert target["datasource"]["uid"] == "${datasource}", title
        assert promql_check.variables(target["expr"]) <= defined, title
        promql_check.parse(target["expr"])  # raises on a syntax error


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    """/metrics of a real sidecar process after Routes and ReportOutcomes of every kind."""
    tmp = tmp_path_factory.mktemp("metrics")
    raw = config_dict(tmp)
    admin = f"127.0.0.1:{free_port()}"
    raw["telemetry"] = {"exporter": "none", "admin_listen": admin}
    # A small budget that a handful of decisions takes past its alert_at, then its limit.
    raw["budgets"].append({"scope": "project:beta", "period": "day", "limit_usd": 0.02,
                           "alert_at": 0.5, "on_exceed": "reject"})
    target = f"127.0.0.1:{free_port()}"
    log = tmp / "sidecar.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([str(BIN / "routing-sidecar"), "serve", "--config",
                                 str(write_config(tmp, raw)), "--listen", target],
                                stdout=sink, stderr=sink)
    try:
        assert wait_healthy(target, proc).returncode == 0, log.read_text()
        wait_admin(admin, proc)
        with grpc.insecure_channel(target) as channel:
            _traffic(pb_grpc.RouterStub(channel))
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(dict(s.labels))
    return samples


def _traffic(stub: pb_grpc.RouterStub) -> None:
    def route(task_id: str, project: str, **kw: Any) -> pb.Decision:
        d: pb.Decision = stub.Route(pb.RouteRequest(
            task_id=task_id, task_type="fix_bug", estimated_input_tokens=2000,
            max_output_tokens=1000, labels={"project": project}, **kw), timeout=10)
        return d

    first, second = route("g-1", "alpha"), route("g-2", "alpha")
    rejected = route("g-3", "alpha", requires=pb.Requirements(capabilities=["teleportation"]))
    assert rejected.status == pb.DECISION_STATUS_REJECTED
    stub.ReportOutcome(pb.Outcome(decision_id=first.decision_id, success=True, attempts=[
        pb.Attempt(model=first.model, status=pb.ATTEMPT_STATUS_TRANSIENT_ERROR,
                   duration=Duration(seconds=1), input_tokens=2000, cost_micros=1000),
        pb.Attempt(model=first.fallbacks[0].model, status=pb.ATTEMPT_STATUS_SUCCESS,
                   duration=Duration(seconds=2), input_tokens=2000, output_tokens=500,
                   cost_micros=2500)]), timeout=10)
    stub.ReportOutcome(pb.Outcome(decision_id=second.decision_id, success=True, attempts=[
        pb.Attempt(model=second.model, status=pb.ATTEMPT_STATUS_SUCCESS,
                   duration=Duration(seconds=1), input_tokens=1500, output_tokens=300)]),
        timeout=10)
    statuses = [route(f"b-{i}", "beta").status for i in range(30)]
    assert pb.DECISION_STATUS_REJECTED in statuses  # the beta budget alerted, then ran out


def test_every_dashboard_query_reads_what_the_sidecar_exports(
    exported: dict[str, list[dict[str, str]]],
) -> None:
    problems = []
    for title, target in _targets():
        for p in promql_check.check(target["expr"], exported, target.get("legendFormat", "")):
            problems.append(f"{title}: {p}")
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            problems += [f"${var['name']}: {p}" for p in
                         promql_check.check_label_values(var["query"], exported)]
    assert not problems, "\n".join(problems)
    used = {s.name for _, t in _targets() for s in promql_check.analyse(t["expr"]).selectors}
    assert {"routing_decisions_total", "routing_decision_duration_seconds_bucket",
            "routing_spend_usd_total", "routing_tokens_total", "routing_fallbacks_total",
            "routing_budget_utilisation", "routing_budget_state", "routing_budget_alerts_total",
            "routing_provider_detection_state", "routing_provider_breaker_state"} <= used


@pytest.mark.parametrize(("expr", "legend", "problem"), [
    ("sum(routing_decisions_total)", "", "without rate()"),
    ("rate(routing_decisions_total[5m])", "", "not aggregated across pods"),
    ("sum(rate(routing_decisions[5m]))", "", "routing_decisions: not exported"),
    ("sum by (modle) (rate(routing_decisions_total[5m]))", "", "['modle'] on none"),
    ('sum(rate(routing_decisions_total{status="routd"}[5m]))', "", "selects nothing"),
    ('sum(rate(routing_decisions_total{stauts="routed"}[5m]))', "", "no label 'stauts'"),
    ("histogram_quantile(0.99, sum by (model) "
     "(rate(routing_decision_duration_seconds_bucket[5m])))", "", "without le"),
    ("sum by (model) (rate(routing_decisions_total[5m]))", "{{provider}}", "legend"),
    ("sum by (provider) (rate(routing_spend_usd_total[5m])) / "
     "sum(rate(routing_tokens_total[5m]))", "", "never match"),
])
def test_the_query_check_catches_broken_queries(
    exported: dict[str, list[dict[str, str]]], expr: str, legend: str, problem: str,
) -> None:
    found = promql_check.check(expr, exported, legend)
    assert any(problem in p for p in found), found


def test_the_compose_command_starts_a_serving_sidecar(tmp_path: Path) -> None:
    """The sidecar service's command, run as compose runs it, on ports of its own."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    command = list(compose["services"]["sidecar"]["command"])
    assert arg_value(command, "--listen").startswith("0.0.0.0:")
    assert arg_value(command, "--admin-listen").startswith("0.0.0.0:")
    raw = yaml.safe_load((ROOT / arg_value(command, "--config")).read_text())
    raw["store"] = {"path": str(tmp_path / "routing.db")}
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(raw))
    grpc_port, admin_port = free_port(), free_port()
    argv = [str(BIN / "routing-sidecar"), "serve", *command, "--config", str(config),
            "--listen", f"0.0.0.0:{grpc_port}", "--admin-listen", f"0.0.0.0:{admin_port}"]
    log = tmp_path / "sidecar.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=sink, stderr=sink)
    try:
        target = f"127.0.0.1:{grpc_port}"
        ok = wait_healthy(target, proc)
        assert ok.returncode == 0, log.read_text()
        wait_admin(f"127.0.0.1:{admin_port}", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
