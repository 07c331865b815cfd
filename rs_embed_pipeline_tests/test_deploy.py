"""deploy/ and the executor wiring, checked without Docker or a cluster.

- every YAML file parses;
- the Helm values use only keys of the official Dagster chart (the allowlist below is transcribed
  from the chart's values schema, helm/dagster/schema/schema/charts in dagster-io/dagster, for the
  sections used here);
- the ECS dagster.yaml validates against Dagster's instance schema and the EcsRunLauncher /
  S3ComputeLogManager config schemas;
- the Celery worker config validates against the dagster-celery executor schema;
- the GPU op tag on the embedding steps turns into a GPU pod spec with dagster-k8s;
- the executor of each job is chosen from Settings (default: multiprocess).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
ANY = "*"  # free-form below this key (env maps, annotations, Kubernetes objects)

# Keys of the Dagster Helm chart's values used in deploy/helm/values.yaml (chart values schema:
# DagsterHelmValues, ServiceAccount, Global, PostgreSQL, ComputeLogManager, Webserver, Daemon,
# Concurrency, UserDeployments/UserDeployment, RunLauncher/K8sRunLauncherConfig/RunK8sConfig).
HELM_KEYS = {
    "global": {"postgresqlSecretName": ANY, "dagsterHome": ANY, "serviceAccountName": ANY,
               "celeryConfigSecretName": ANY, "dagsterInstanceConfigMap": ANY},
    "serviceAccount": {"create": ANY, "name": ANY, "annotations": ANY},
    "postgresql": {"image": ANY, "enabled": ANY, "postgresqlHost": ANY, "postgresqlUsername": ANY,
                   "postgresqlPassword": ANY, "postgresqlDatabase": ANY, "postgresqlParams": ANY,
                   "postgresqlScheme": ANY, "service": {"port": ANY}},
    "generatePostgresqlPasswordSecret": ANY,
    "pythonLogs": {"pythonLogLevel": ANY, "managedPythonLoggers": ANY, "dagsterHandlerConfig": ANY},
    "computeLogManager": {"type": ANY, "config": {"s3ComputeLogManager": {
        "localDir": ANY, "prefix": ANY, "useSsl": ANY, "verify": ANY, "verifyCertPath": ANY,
        "endpointUrl": ANY, "skipEmptyFiles": ANY, "uploadInterval": ANY, "uploadExtraArgs": ANY,
        "showUrlOnly": ANY, "region": ANY, "bucket": ANY}}},
    "dagsterWebserver": {k: ANY for k in (
        "replicaCount", "image", "nameOverride", "service", "workspace", "env", "envConfigMaps",
        "envSecrets", "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations",
        "podSecurityContext", "securityContext", "resources", "readinessProbe", "livenessProbe",
        "startupProbe", "annotations", "enableReadOnly", "dbStatementTimeout", "dbPoolRecycle",
        "logLevel", "schedulerName", "volumeMounts", "volumes", "pathPrefix")},
    "dagsterDaemon": {
        **{k: ANY for k in (
            "enabled", "image", "heartbeatTolerance", "env", "envConfigMaps", "envSecrets",
            "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations",
            "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe",
            "startupProbe", "annotations", "runMonitoring", "sensors", "schedules", "schedulerName",
            "volumeMounts", "volumes")},
        "runCoordinator": {"enabled": ANY, "type": ANY, "config": {"queuedRunCoordinator": {
            "maxConcurrentRuns": ANY, "tagConcurrencyLimits": ANY, "dequeueIntervalSeconds": ANY,
            "dequeueNumWorkers": ANY, "dequeueUseThreads": ANY}}},
        "runRetries": {"enabled": ANY, "maxRetries": ANY, "retryOnAssetOrOpFailure": ANY},
    },
    "concurrency": {"enabled": ANY,
                    "pools": {"defaultLimit": ANY, "granularity": ANY, "opGranularityRunBuffer": ANY},
                    "runs": {"maxConcurrentRuns": ANY, "tagConcurrencyLimits": ANY}},
    "dagster-user-deployments": {
        "enabled": ANY, "enableSubchart": ANY, "imagePullSecrets": ANY,
        "deployments": {k: ANY for k in (
            "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
            "deploymentNamespace", "port", "replicaCount", "env", "envConfigMaps", "envSecrets",
            "annotations", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
            "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe",
            "labels", "volumeMounts", "volumes", "schedulerName", "initContainers",
            "sidecarContainers", "deploymentStrategy")},
    },
    "runLauncher": {"type": ANY, "config": {"k8sRunLauncher": {
        **{k: ANY for k in (
            "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
            "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
            "failPodOnRunFailure", "resources", "schedulerName", "securityContext")},
        "runK8sConfig": {k: ANY for k in (
            "containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata")},
    }}},
}


def _unknown_keys(values, allowed, path="") -> list[str]:
    if allowed == ANY:
        return []
    if isinstance(values, list):
        return [k for item in values for k in _unknown_keys(item, allowed, f"{path}[]")]
    if not isinstance(values, dict):
        return []
    unknown = []
    for key, value in values.items():
        if key not in allowed:
            unknown.append(f"{path}{key}")
        else:
            unknown.extend(_unknown_keys(value, allowed[key], f"{path}{key}."))
    return unknown


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    assert isinstance(_yaml(path), dict)


def test_helm_values_use_only_chart_keys():
    values = _yaml(DEPLOY / "helm" / "values.yaml")
    assert _unknown_keys(values, HELM_KEYS) == []
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    assert values["postgresql"]["enabled"] is True


def test_helm_code_location_runs_the_k8s_executor_on_s3():
    from rs_embed_pipeline.orchestration.settings import EXECUTOR_NAMES, Settings

    (deployment,) = _yaml(DEPLOY / "helm" / "values.yaml")["dagster-user-deployments"]["deployments"]
    # `dagster code-server start` (reloadable; issue 11) instead of `dagster api grpc`: the chart
    # prefers dagsterApiGrpcArgs when both are set, so it must be absent.
    assert deployment["codeServerArgs"] == ["-m", "rs_embed_pipeline.definitions"]
    assert "dagsterApiGrpcArgs" not in deployment
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    env = deployment["env"]
    assert env["RS_EMBED_EXECUTOR"] in EXECUTOR_NAMES
    assert env["RS_EMBED_STORE"].startswith("s3://")
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env), "credentials come from IRSA"
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("RS_EMBED")})
    assert settings.executor == "k8s" and settings.worker_python == "/opt/venv-worker/bin/python"


def test_ecs_instance_config_validates(tmp_path):
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    ecs = _yaml(DEPLOY / "ecs" / "dagster.yaml")
    # The fragment alone, and merged over the repository's dagster.yaml as its header says.
    for name, config in {"fragment": ecs, "merged": {**_yaml(REPO / "dagster.yaml"), **ecs}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "dagster.yaml").write_text(yaml.safe_dump(config))
        validated, _ = dagster_instance_config(str(tmp_path / name))
        assert validated["run_launcher"]["class"] == "EcsRunLauncher"
    for cls, block in ((EcsRunLauncher, ecs["run_launcher"]), (S3ComputeLogManager, ecs["compute_logs"])):
        module = __import__(block["module"], fromlist=[block["class"]])
        assert getattr(module, block["class"]) is cls
        result = validate_config(cls.config_type(), block["config"])
        assert result.success, [e.message for e in result.errors]
    # No literal secret: the database password comes from the task's environment.
    assert ecs["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}


def test_celery_worker_config_validates(monkeypatch):
    from dagster._config import post_process_config, validate_config
    from dagster_celery import celery_executor

    monkeypatch.setenv("RS_EMBED_CELERY_BROKER", "redis://127.0.0.1:6379/0")
    block = _yaml(DEPLOY / "celery" / "celery.yaml")["execution"]["config"]
    config_type = celery_executor.config_schema.config_type
    assert validate_config(config_type, block).success
    assert post_process_config(config_type, block).value["broker"] == "redis://127.0.0.1:6379/0"


def test_dockerfile_builds_both_environments():
    text = (DEPLOY / "Dockerfile").read_text()
    for needle in ('pip install -e ".[orchestrator]"', 'pip install -e ".[worker]"', "/opt/venv-worker",
                   "RS_EMBED_WORKER_PYTHON=/opt/venv-worker/bin/python", "rs_embed_pipeline.definitions"):
        assert needle in text, needle
    if shutil.which("hadolint"):  # pragma: no cover - not installed here
        import subprocess

        subprocess.run(["hadolint", str(DEPLOY / "Dockerfile")], check=True)


# ------------------------------------------------------------------------------ code wiring
def _defs(tmp_path, **env):
    from rs_embed_pipeline.orchestration.definitions import build_definitions
    from rs_embed_pipeline.orchestration.settings import Settings

    settings = Settings.from_env({"RS_EMBED_STORE": str(tmp_path / "store"), **env})
    return build_definitions(settings)


def test_embedding_steps_carry_the_gpu_pod_spec(tmp_path):
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    job = _defs(tmp_path).resolve_job_def("build_embeddings")
    tagged = {node.name: node.definition.tags for node in job.graph.node_dict.values()
              if "dagster-k8s/config" in node.definition.tags}
    embedding_steps = {name for name in job.graph.node_dict if name.endswith("_embeddings")}
    assert "thor_s2_embeddings" in embedding_steps and set(tagged) == embedding_steps  # GPU steps only
    user_config = get_user_defined_k8s_config(tagged["thor_s2_embeddings"])
    k8s_job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="rs-embed:test", dagster_home="/opt/dagster/dagster_home"),
        args=["dagster", "api", "execute_step"], job_name="step", user_defined_k8s_config=user_config)
    pod = k8s_job.spec.template.spec
    assert pod.node_selector == {"rs-embed/node-pool": "gpu"}
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert pod.containers[0].resources.limits["nvidia.com/gpu"] == "1"


def test_executor_is_chosen_from_settings(tmp_path):
    defs = _defs(tmp_path)
    assert defs.resolve_job_def("build_embeddings").executor_def.name == "multiprocess"
    assert defs.resolve_job_def("build_embeddings_celery").executor_def.name == "celery"

    k8s = _defs(tmp_path, RS_EMBED_EXECUTOR="k8s", RS_EMBED_CELERY_BROKER="redis://127.0.0.1:1/0")
    assert k8s.resolve_job_def("build_embeddings").executor_def.name == "k8s"
    celery = k8s.resolve_job_def("build_embeddings_celery").executor_def
    assert celery.name == "celery"
    assert not celery.config_schema.as_field().is_required  # broker from settings, no run config

    with pytest.raises(ValueError, match="RS_EMBED_EXECUTOR"):
        _defs(tmp_path, RS_EMBED_EXECUTOR="spark")


# ------------------------------------------------------------------------------ issue 11
# HF_HOME decides the cache in every deployment; its two alternatives are left unset on purpose.
HF_ALTERNATIVES = {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"}


def _k8s_model(kind: str, manifest: dict):
    """A manifest (camelCase, as kubectl reads it) as a strict kubernetes client model: unknown
    keys anywhere fail."""
    import kubernetes.client as k8s
    from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

    cls = getattr(k8s, kind)
    return k8s_model_from_dict(cls, k8s_snake_case_dict(cls, manifest))


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_every_setting_and_knob_is_forwarded_to_runs():
    """The variables the code reads (found by letting Settings.from_env read them) reach ECS run
    tasks and Kubernetes run and step pods; nothing is forwarded that the code does not read."""
    from rs_embed_pipeline.orchestration.settings import Settings, environment_variables

    read = set(environment_variables())
    assert {"RS_EMBED_STORE", "RS_EMBED_THOR_NORMALIZE", "RS_EMBED_CONFIG", "HF_HOME"} <= read
    needed = read - HF_ALTERNATIVES

    # ECS: the services' environment file sets each; the launcher forwards each to run tasks.
    env_file = _env_file(DEPLOY / "ecs" / "rs-embed.env")
    assert set(env_file) == needed
    forwarded = set(_yaml(DEPLOY / "ecs" / "dagster.yaml")["run_launcher"]["config"]["env_vars"])
    assert forwarded == needed | {"AWS_REGION"}
    Settings.from_env(env_file)  # the file's values are valid

    # Kubernetes: the values' env plus the settings ConfigMap, both passed on to runs.
    (deployment,) = _yaml(DEPLOY / "helm" / "values.yaml")["dagster-user-deployments"]["deployments"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert {"name": "rs-embed-settings"} in deployment["envConfigMaps"]
    configmap = _k8s_model("V1ConfigMap", _yaml(DEPLOY / "k8s" / "settings-configmap.yaml"))
    assert configmap.metadata.name == "rs-embed-settings"
    env = {k: v for k, v in deployment["env"].items() if k != "AWS_REGION"}
    assert not set(env) & set(configmap.data), "set once: the values' env or the ConfigMap"
    assert set(env) | set(configmap.data) == needed
    assert not HF_ALTERNATIVES & (set(env) | set(configmap.data) | set(env_file))
    settings = Settings.from_env({**configmap.data, **env})
    assert settings.executor == "k8s" and str(settings.config_path) == "/opt/dagster/config/pipeline.yaml"


def test_k8s_manifests_are_valid_kubernetes_objects():
    from rs_embed_pipeline.orchestration.executors import HF_CACHE_CLAIM

    regions = _k8s_model("V1ConfigMap", _yaml(DEPLOY / "k8s" / "regions-configmap.yaml"))
    assert regions.metadata.name == "rs-embed-regions"
    pvc = _k8s_model("V1PersistentVolumeClaim", _yaml(DEPLOY / "k8s" / "hf-cache-pvc.yaml"))
    assert pvc.metadata.name == HF_CACHE_CLAIM and pvc.spec.access_modes == ["ReadWriteMany"]
    assert _k8s_model("V1ConfigMap", _yaml(DEPLOY / "k8s" / "settings-configmap.yaml")).data


def test_regions_configmap_is_a_valid_regions_file(tmp_path):
    from rs_embed_pipeline.core.regions import load_pipeline_config

    data = _yaml(DEPLOY / "k8s" / "regions-configmap.yaml")["data"]["pipeline.yaml"]
    (tmp_path / "pipeline.yaml").write_text(data)
    assert load_pipeline_config(tmp_path / "pipeline.yaml").region_names == ["demo"]


def _rendered_job(user_config: dict | None, run_k8s: dict | None = None):
    """The Kubernetes Job that dagster-k8s builds for a run pod or a step pod of this deployment:
    the code location's container context (the values' env, envConfigMaps, volumes, volumeMounts,
    as includeConfigInLaunchedRuns passes them on), plus the step's or run's own config."""
    import kubernetes.client as k8s
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    (deployment,) = _yaml(DEPLOY / "helm" / "values.yaml")["dagster-user-deployments"]["deployments"]
    job_config = DagsterK8sJobConfig(
        job_image="rs-embed:test", dagster_home="/opt/dagster/dagster_home",
        env_config_maps=[m["name"] for m in deployment["envConfigMaps"]],
        env_vars=[f"{k}={v}" for k, v in deployment["env"].items()],
        volumes=deployment["volumes"], volume_mounts=deployment["volumeMounts"])
    config = dict(user_config or {})
    for camel, snake in (("containerConfig", "container_config"), ("podSpecConfig", "pod_spec_config")):
        if run_k8s and camel in run_k8s:
            config[snake] = run_k8s[camel]
    job = construct_dagster_k8s_job(job_config, args=["dagster", "api", "execute_step"], job_name="rs-embed-test",
                                    user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config))
    # Round trip through the API's JSON and back into strict models: the spec is valid Kubernetes.
    return _k8s_model("V1Job", k8s.ApiClient().sanitize_for_serialization(job))


def test_rendered_gpu_step_pod_mounts_the_hf_cache_and_the_regions():
    from rs_embed_pipeline.orchestration.executors import GPU_STEP_TAGS, HF_CACHE_CLAIM, HF_CACHE_MOUNT

    user = json.loads(GPU_STEP_TAGS["dagster-k8s/config"])
    pod = _rendered_job(user).spec.template.spec
    (container,) = pod.containers
    assert pod.node_selector == {"rs-embed/node-pool": "gpu"}
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["hf-cache"].persistent_volume_claim.claim_name == HF_CACHE_CLAIM
    assert volumes["regions"].config_map.name == "rs-embed-regions"
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    assert mounts[HF_CACHE_MOUNT] == "hf-cache" and mounts["/opt/dagster/config"] == "regions"
    env = {e.name: e.value for e in container.env}
    assert env["RS_EMBED_DEVICE"] == "cuda" and env["HF_HOME"] == HF_CACHE_MOUNT
    assert env["RS_EMBED_CONFIG"] == "/opt/dagster/config/pipeline.yaml"
    assert [e.config_map_ref.name for e in container.env_from if e.config_map_ref] == ["rs-embed-settings"]


def test_rendered_run_pod_is_small_and_on_the_cpu_pool():
    values = _yaml(DEPLOY / "helm" / "values.yaml")
    run_k8s = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    pod = _rendered_job(None, run_k8s).spec.template.spec
    (container,) = pod.containers
    assert pod.node_selector == {"rs-embed/node-pool": "cpu"}
    assert not pod.tolerations and "nvidia.com/gpu" not in (container.resources.limits or {})
    assert {v.name for v in pod.volumes} == {"regions"}


def test_run_monitoring_and_python_logs_are_on_everywhere(tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    repo = _yaml(REPO / "dagster.yaml")
    ecs = _yaml(DEPLOY / "ecs" / "dagster.yaml")
    helm = _yaml(DEPLOY / "helm" / "values.yaml")
    for config in (repo, ecs):
        assert config["run_monitoring"]["enabled"] is True
        assert config["run_retries"]["retry_on_asset_or_op_failure"] is False
        assert "rs_embed_pipeline.providers" in config["python_logs"]["managed_python_loggers"]
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(repo))
    validated, _ = dagster_instance_config(str(tmp_path))
    assert validated["run_monitoring"]["enabled"] is True
    assert helm["dagsterDaemon"]["runMonitoring"]["enabled"] is True
    assert "rs_embed_pipeline.providers" in helm["pythonLogs"]["managedPythonLoggers"]
    # The misleading claim is gone: crashed runs are noticed because run monitoring is on.
    text = (REPO / "dagster.yaml").read_text()
    assert "run_monitoring:\n  enabled: true" in text


def test_celery_routes_gpu_steps_to_the_gpu_queue(tmp_path):
    from rs_embed_pipeline.orchestration.executors import GPU_QUEUE

    job = _defs(tmp_path).resolve_job_def("build_embeddings_celery")
    queues = {name: node.definition.tags.get("dagster-celery/queue") for name, node in job.graph.node_dict.items()}
    assert {n for n, q in queues.items() if q == GPU_QUEUE} == {n for n in queues if n.endswith("_embeddings")}
    assert all(q is None for n, q in queues.items() if not n.endswith("_embeddings"))
