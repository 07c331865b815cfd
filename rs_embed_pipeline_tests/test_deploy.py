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
    from rs_embed_pipeline.settings import EXECUTOR_NAMES, Settings

    (deployment,) = _yaml(DEPLOY / "helm" / "values.yaml")["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "rs_embed_pipeline.definitions"]
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
    from rs_embed_pipeline.definitions import build_definitions
    from rs_embed_pipeline.settings import Settings

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
