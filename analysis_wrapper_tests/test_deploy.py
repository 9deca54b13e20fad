"""What of the deployment files (``Dockerfile``, ``deploy/``) this machine can check, checked.

There is no Docker engine, no AWS account and no Kubernetes cluster here, so nothing is built, registered
or installed for real. What is checked instead: every shipped instance config loads into Dagster's instance
config, and its parts that need no server are built from it; the ECS task definitions are valid input for
botocore's ECS model and agree with the instance config, the workspace, the image and the settings; the IAM
policies allow what the installed libraries and the package call; the Helm values use keys of Dagster's
chart and agree with the image and the settings; the Dockerfile installs the package as ``scripts/setup.sh``
does, and that install step runs here. The README's *Deploy* section says the same, and what is left for a
real deployment.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore.validate import validate_parameters
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config, dagster_instance_config_schema
from dagster._core.instance.ref import InstanceRef
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster._core.storage.config import pg_config
from dagster._core.workspace.load import location_origins_from_yaml_paths
from dagster_aws.ecs import EcsRunLauncher
from dagster_aws.s3 import S3Resource
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from packaging.specifiers import SpecifierSet

from analysis_wrapper.code_location import results_storage_resource, store_resource
from analysis_wrapper.resources.record_store import _open_store
from analysis_wrapper.resources.results_resources import S3ResultsResource
from analysis_wrapper.settings import Settings
from analysis_wrapper.tags import ANALYSIS_TAG
from analysis_wrapper_tests.tls_files import CA_NAME, make_ca

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
ECS = DEPLOY / "ecs"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
LOCAL_INSTANCE = yaml.safe_load((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())

SETTINGS = set(Settings.model_fields)
SECRET_NAMES = {
    "DOCDB_URI",
    "METADATA_DOCDB_URI",
    "DAGSTER_PG_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
}
"""Variables that hold secrets: they may come only from a secret store, never as plain values."""
AWS_SDK_VARIABLES = {"AWS_DEFAULT_REGION", "AWS_REGION"}
"""Read by boto3 itself (the region); credentials come from the task's role or a secret."""
DAGSTER_RUNTIME_VARIABLES = {"DAGSTER_HOME", "DAGSTER_CURRENT_IMAGE"}
"""Read by Dagster's processes: the instance folder, and the image a code location reports for its runs."""
AWS_DUMMY_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""Enough for boto3 to build clients without asking anyone (no instance metadata, no network)."""

SHIPPED_INSTANCE_CONFIGS = sorted(path.parent for path in DEPLOY.rglob("dagster.yaml"))
TASK_DEFINITIONS = {
    path.stem: json.loads(path.read_text()) for path in sorted((ECS / "task-definitions").glob("*.json"))
}
TASK_ROLE_POLICY = json.loads((ECS / "iam" / "task-role-policy.json").read_text())
EXECUTION_ROLE_POLICY = json.loads((ECS / "iam" / "execution-role-policy.json").read_text())
HELM = yaml.safe_load(HELM_VALUES.read_text())
HELM_DEPLOYMENTS = HELM["dagster-user-deployments"]["deployments"]


def _deploy_section() -> str:
    """The README's Deploy section (or, until it is merged there, deploy/README-section.md)."""
    readme = (REPO_ROOT / "README.md").read_text()
    if "\n## Deploy\n" in readme:
        section = readme[readme.index("\n## Deploy\n") + 1 :]
    else:
        section = (DEPLOY / "README-section.md").read_text()
    following = section.find("\n## ", 1)
    return section if following < 0 else section[:following]


# ---- small parsers ---------------------------------------------------------------------------------------
def _env_references(value: Any) -> set[str]:
    """Names of the environment variables a Dagster YAML config reads (``{env: NAME}``)."""
    if isinstance(value, dict):
        if set(value) == {"env"} and isinstance(value["env"], str):
            return {value["env"]}
        return set().union(*(_env_references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_env_references(v) for v in value)) if value else set()
    return set()


def _dummy_env(names: set[str]) -> dict[str, str]:
    return {name: "5432" if name.endswith("_PORT") else f"dummy-{name.lower()}" for name in names}


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, ``(INSTRUCTION, arguments)``, continuation lines joined."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, arguments = current.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def _docker_args(instruction: str) -> list[list[str]]:
    return [shlex.split(args) for keyword, args in _dockerfile() if keyword == instruction]


def _docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _docker_args("ENV"):
        env.update(item.split("=", 1) for item in args)  # type: ignore[arg-type]
    return env


def _docker_cmd() -> list[str]:
    (cmd,) = [json.loads(args) for keyword, args in _dockerfile() if keyword == "CMD"]
    return cmd


def _docker_copies() -> list[tuple[list[str], str]]:
    return [(args[:-1], args[-1]) for args in _docker_args("COPY") if not args[0].startswith("--")]


def _dockerignored(path: str) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` (relative to the repository) out of the build context: a
    pattern matches the path or a folder above it; ``**/`` matches at any depth (Docker's rules, for the
    patterns used here: no ``!`` exceptions)."""
    parts = path.strip("/").split("/")
    for pattern in _dockerignore_patterns():
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts):
                return True
            continue
        depth = pattern.count("/") + 1
        if len(parts) >= depth and fnmatch.fnmatchcase("/".join(parts[:depth]), pattern):
            return True
    return False


def _dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def _container(task: str) -> dict[str, Any]:
    (container,) = TASK_DEFINITIONS[task]["containerDefinitions"]
    return container


def _task_environment(task: str) -> dict[str, str]:
    return {item["name"]: item["value"] for item in _container(task).get("environment", [])}


def _task_secrets(task: str) -> dict[str, str]:
    return {item["name"]: item["valueFrom"] for item in _container(task).get("secrets", [])}


def _task_variables(task: str) -> set[str]:
    return set(_task_environment(task)) | set(_task_secrets(task))


def _policy_statements(policy: dict[str, Any]) -> Iterator[tuple[set[str], list[str]]]:
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions, resources = statement["Action"], statement["Resource"]
        yield (
            {actions} if isinstance(actions, str) else set(actions),
            [resources] if isinstance(resources, str) else list(resources),
        )


def _allowed(policy: dict[str, Any], action: str, resource: str) -> bool:
    return any(
        action in actions and any(fnmatch.fnmatchcase(resource, pattern) for pattern in resources)
        for actions, resources in _policy_statements(policy)
    )


def _clean_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the developer's shell."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)


def _make_ca(path: Path) -> str:
    """A self-signed CA certificate at ``path`` (PEM), standing in for DocumentDB's global-bundle.pem."""
    make_ca(path)
    return CA_NAME


# ---- instance configs ------------------------------------------------------------------------------------
def test_the_shipped_instance_configs_are_found() -> None:
    assert ECS in SHIPPED_INSTANCE_CONFIGS, "deploy/ecs/dagster.yaml is missing"


@pytest.mark.parametrize(
    "config_dir", SHIPPED_INSTANCE_CONFIGS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix()
)
def test_each_shipped_instance_config_loads_with_dummy_environment(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = yaml.safe_load((config_dir / "dagster.yaml").read_text())
    env = _dummy_env(_env_references(raw))
    for name, value in {**AWS_DUMMY_ENV, **env}.items():
        monkeypatch.setenv(name, value)

    # Dagster's instance schema, then every part that can be built without a server.
    dagster_instance_config(str(config_dir))
    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(config_dir))
    assert ref.run_coordinator is not None
    assert ref.run_launcher is not None
    assert ref.compute_log_manager is not None
    assert ref.scheduler is not None
    assert ref.settings is not None

    if ref.storage_data.module_name == "dagster_postgres":
        # Building the storage connects to PostgreSQL: resolve its config from the environment instead.
        stored = yaml.safe_load(ref.storage_data.config_yaml)
        resolved = process_config(pg_config(), stored)
        assert resolved.success, resolved.errors
        db = resolved.value["postgres_db"]  # type: ignore[index]
        for field, value in stored["postgres_db"].items():
            if isinstance(value, dict) and "env" in value:
                assert str(db[field]) == env[value["env"]], field


def test_ecs_instance_config_builds_its_launcher_queue_and_logs_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = yaml.safe_load((ECS / "dagster.yaml").read_text())
    env = _dummy_env(_env_references(raw))
    for name, value in {**AWS_DUMMY_ENV, **env}.items():
        monkeypatch.setenv(name, value)
    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(ECS))

    launcher = ref.run_launcher
    assert isinstance(launcher, EcsRunLauncher)
    assert launcher.use_current_ecs_task_config  # cluster, network, roles: the daemon's own task
    assert launcher.secrets_tags == []  # only the secrets the task definition names
    assert launcher.container_name == "run"
    assert launcher.run_resources == {"cpu": "1024", "memory": "4096"}
    assert launcher.propagate_tags == {"allow_list": [ANALYSIS_TAG]}

    assert isinstance(ref.run_coordinator, QueuedRunCoordinator)
    logs = ref.compute_log_manager
    assert isinstance(logs, S3ComputeLogManager)
    assert logs._s3_bucket == env["DAGSTER_COMPUTE_LOG_BUCKET"]
    assert ref.storage_data.module_name == "dagster_postgres"
    assert ref.settings["run_monitoring"]["enabled"]


def test_a_missing_secret_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load((ECS / "dagster.yaml").read_text())
    for name, value in _dummy_env(_env_references(raw)).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    resolved = process_config(pg_config(), raw["storage"]["postgres"])
    assert not resolved.success
    assert "DAGSTER_PG_PASSWORD" in str(resolved.errors)


@pytest.mark.parametrize(
    "config_dir", SHIPPED_INSTANCE_CONFIGS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix()
)
def test_instance_configs_hold_no_literal_secret(config_dir: Path) -> None:
    raw = yaml.safe_load((config_dir / "dagster.yaml").read_text())
    postgres = (raw.get("storage") or {}).get("postgres")
    if postgres is None:
        return
    assert "postgres_url" not in postgres or _env_references(postgres["postgres_url"])
    password = postgres.get("postgres_db", {}).get("password")
    assert password is None or _env_references(password), "the PostgreSQL password must be `env:`"


def test_the_postgres_settings_have_one_set_of_names() -> None:
    """The ECS config and deploy/dagster.yaml (the PostgreSQL storage config) read the same variables."""
    assert (DEPLOY / "dagster.yaml").exists(), "deploy/dagster.yaml (PostgreSQL storage) is not shipped"
    ours = yaml.safe_load((ECS / "dagster.yaml").read_text())["storage"]["postgres"]
    theirs = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["storage"]["postgres"]
    assert _env_references(ours) == _env_references(theirs)


def test_dagster_postgres_connects_where_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    dagster_postgres_utils = pytest.importorskip(
        "dagster_postgres.utils", reason="dagster-postgres is not installed in this environment"
    )
    raw = yaml.safe_load((ECS / "dagster.yaml").read_text())
    env = _dummy_env(_env_references(raw))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    resolved = process_config(pg_config(), raw["storage"]["postgres"])
    assert resolved.success, resolved.errors
    url = dagster_postgres_utils.pg_url_from_config(resolved.value)
    assert env["DAGSTER_PG_HOST"] in url and env["DAGSTER_PG_DB"] in url and "sslmode=require" in url


def _queue(instance: dict[str, Any]) -> dict[str, Any]:
    return instance["run_coordinator"]["config"]


def _helm_queue_as_instance_config() -> dict[str, Any]:
    """What the chart writes into its instance config from our values (its run-coordinator template maps
    maxConcurrentRuns, tagConcurrencyLimits (verbatim) and dequeueIntervalSeconds)."""
    queued = HELM["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    return {
        "max_concurrent_runs": queued["maxConcurrentRuns"],
        "tag_concurrency_limits": queued["tagConcurrencyLimits"],
        "dequeue_interval_seconds": queued["dequeueIntervalSeconds"],
    }


def test_every_deployment_queues_runs_with_the_local_limits() -> None:
    local = _queue(LOCAL_INSTANCE)
    assert local["tag_concurrency_limits"][0]["key"] == ANALYSIS_TAG
    ecs = yaml.safe_load((ECS / "dagster.yaml").read_text())
    assert ecs["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert _queue(ecs) == local
    assert HELM["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert HELM["dagsterDaemon"]["runCoordinator"]["enabled"] is True
    helm = _helm_queue_as_instance_config()
    assert helm == local
    processed = process_config(QueuedRunCoordinator.config_type(), helm)
    assert processed.success, processed.errors


def test_no_deployment_retries_or_resumes_runs_itself() -> None:
    """The inbox sensor retries failed jobs (MAX_ATTEMPTS); Dagster retrying or resuming runs as well
    would compute a job twice over."""
    ecs = yaml.safe_load((ECS / "dagster.yaml").read_text())
    assert not ecs.get("run_retries", {}).get("enabled", False)
    assert ecs["run_monitoring"]["enabled"] and ecs["run_monitoring"]["max_resume_run_attempts"] == 0
    daemon = HELM["dagsterDaemon"]
    assert daemon["runRetries"]["enabled"] is False
    assert daemon["runMonitoring"]["enabled"] is True and daemon["runMonitoring"]["maxResumeRunAttempts"] == 0


def test_helm_run_monitoring_and_compute_logs_validate_against_dagster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The chart's instance template maps these camelCase keys to Dagster's snake_case ones.
    monitoring = HELM["dagsterDaemon"]["runMonitoring"]
    as_instance = {
        "enabled": monitoring["enabled"],
        "start_timeout_seconds": monitoring["startTimeoutSeconds"],
        "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
        "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
        "poll_interval_seconds": monitoring["pollIntervalSeconds"],
    }
    processed = process_config(dagster_instance_config_schema()["run_monitoring"].config_type, as_instance)
    assert processed.success, processed.errors

    logs = HELM["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager"
    s3 = logs["config"]["s3ComputeLogManager"]
    config = {"bucket": s3["bucket"], "prefix": s3["prefix"], "upload_interval": s3["uploadInterval"]}
    processed = process_config(S3ComputeLogManager.config_type(), config)
    assert processed.success, processed.errors
    for name, value in AWS_DUMMY_ENV.items():
        monkeypatch.setenv(name, value)
    assert S3ComputeLogManager(**processed.value)._s3_bucket == s3["bucket"]  # type: ignore[arg-type]


# ---- ECS: workspace, task definitions, IAM ---------------------------------------------------------------
def test_ecs_workspace_points_at_the_code_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_CODE_LOCATION_HOST", "analysis-wrapper.dagster.local")
    (origin,) = location_origins_from_yaml_paths([str(ECS / "workspace.yaml")])
    assert origin.host == "analysis-wrapper.dagster.local"
    assert origin.port == int(_docker_args("EXPOSE")[0][0])
    assert origin.location_name == PYPROJECT["tool"]["dagster"]["code_location_name"]


def test_there_is_a_task_definition_for_each_long_running_part() -> None:
    assert set(TASK_DEFINITIONS) == {"webserver", "daemon", "code-location"}


@pytest.mark.parametrize("task", sorted(TASK_DEFINITIONS))
def test_task_definition_is_valid_register_task_definition_input(task: str) -> None:
    ecs = botocore.session.get_session().get_service_model("ecs")
    validate_parameters(TASK_DEFINITIONS[task], ecs.operation_model("RegisterTaskDefinition").input_shape)


@pytest.mark.parametrize("task", sorted(TASK_DEFINITIONS))
def test_task_uses_awsvpc_on_fargate(task: str) -> None:
    """The EcsRunLauncher takes a run's network from the daemon's network interface (awsvpc), and the
    leases tell processes apart by host name, boot id and pid: each task must have its own host."""
    definition = TASK_DEFINITIONS[task]
    assert definition["networkMode"] == "awsvpc"
    assert definition["requiresCompatibilities"] == ["FARGATE"]


def test_tasks_run_the_image_with_the_config_the_image_ships() -> None:
    images = {_container(task)["image"] for task in TASK_DEFINITIONS}
    assert len(images) == 1, "every part of the deployment runs the one image"
    (image,) = images
    copied = {
        Path(destination) / Path(source).name
        for sources, destination in _docker_copies()
        for source in sources
    }
    ecs_home = Path(_task_environment("daemon")["DAGSTER_HOME"])
    assert ecs_home / "dagster.yaml" in copied and ecs_home / "workspace.yaml" in copied
    for task in TASK_DEFINITIONS:
        assert _task_environment(task)["DAGSTER_HOME"] == str(ecs_home), task

    workspace = ["-w", str(ecs_home / "workspace.yaml")]
    assert _container("webserver")["command"][0] == "dagster-webserver"
    assert _container("webserver")["command"][-2:] == workspace
    assert _container("daemon")["command"] == ["dagster-daemon", "run", *workspace]
    assert _container("code-location")["command"] == _docker_cmd()
    assert _task_environment("code-location")["DAGSTER_CURRENT_IMAGE"] == image
    (mapping,) = _container("code-location")["portMappings"]
    assert str(mapping["containerPort"]) == _docker_args("EXPOSE")[0][0]


@pytest.mark.parametrize("task", sorted(TASK_DEFINITIONS))
def test_task_sets_every_variable_its_configs_read(task: str) -> None:
    needed = _env_references(yaml.safe_load((ECS / "dagster.yaml").read_text()))
    if task != "code-location":
        needed |= _env_references(yaml.safe_load((ECS / "workspace.yaml").read_text()))
    assert needed <= _task_variables(task), f"{task} lacks {sorted(needed - _task_variables(task))}"


def test_runs_get_every_setting_the_code_location_has() -> None:
    """Each run's task is derived from the daemon's: its settings and secrets are the runs'."""

    def settings_of(task: str) -> dict[str, str]:
        values = {**_task_environment(task), **_task_secrets(task)}
        return {name: value for name, value in values.items() if name in SETTINGS - DAGSTER_RUNTIME_VARIABLES}

    assert settings_of("daemon") == settings_of("code-location")
    assert {"DOCDB_URI", "ANALYSIS_BUCKET", "DISPATCH_INBOX", "DRY_RUN"} <= set(settings_of("daemon"))
    assert not set(settings_of("webserver")), "the webserver runs no analysis code: it needs no settings"


@pytest.mark.parametrize("task", sorted(TASK_DEFINITIONS))
def test_task_variables_are_known(task: str) -> None:
    configs = _env_references(yaml.safe_load((ECS / "dagster.yaml").read_text())) | _env_references(
        yaml.safe_load((ECS / "workspace.yaml").read_text())
    )
    known = SETTINGS | configs | AWS_SDK_VARIABLES | DAGSTER_RUNTIME_VARIABLES
    assert _task_variables(task) <= known, sorted(_task_variables(task) - known)
    assert "GIT_COMMIT" not in _task_variables(task), "the commit comes from the image (build argument)"


@pytest.mark.parametrize("task", sorted(TASK_DEFINITIONS))
def test_secrets_come_only_from_secrets_manager(task: str) -> None:
    environment = _task_environment(task)
    assert not SECRET_NAMES & set(environment), sorted(SECRET_NAMES & set(environment))
    for value in environment.values():
        assert not re.search(r"://[^/?#]*@", value), f"credentials in a plain value: {value}"
    for name, source in _task_secrets(task).items():
        assert source.startswith("arn:aws:secretsmanager:"), (name, source)


def test_task_settings_parse_and_pick_s3_and_documentdb(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_settings_env(monkeypatch)
    for name, value in _task_environment("code-location").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DOCDB_URI", "mongodb://user:pw@127.0.0.1:9/?replicaSet=rs0")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.DRY_RUN is False
    assert settings.DOCDB_TLS is True
    assert settings.DISPATCH_INBOX.startswith("s3://")
    assert settings.ANALYSIS_BUCKET and not settings.ANALYSIS_BUCKET.startswith("s3://")
    assert isinstance(results_storage_resource(settings, S3Resource()), S3ResultsResource)
    store = store_resource(settings)
    assert store.backend == "mongodb" and store.tls is True
    assert store.tls_ca_file == "/etc/ssl/docdb/global-bundle.pem"


@pytest.mark.parametrize("platform", ["ecs", "helm"])
def test_documentdb_client_gets_tls_the_ca_bundle_and_no_retryable_writes(
    platform: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the settings each platform sets, the code builds a pymongo client with TLS, the CA bundle
    (a generated CA standing in for global-bundle.pem) and retryWrites=false. No server: port 9 on
    loopback refuses, and nothing is asked of it."""
    env = _task_environment("code-location") if platform == "ecs" else dict(HELM_DEPLOYMENTS[0]["env"])
    assert env["DOCDB_TLS_CA_FILE"].endswith("/global-bundle.pem")
    _clean_settings_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ca_subject = _make_ca(tmp_path / "global-bundle.pem")
    monkeypatch.setenv("DOCDB_TLS_CA_FILE", str(tmp_path / "global-bundle.pem"))
    monkeypatch.setenv("DOCDB_URI", "mongodb://user:pw@127.0.0.1:9/?replicaSet=rs0")

    store = _open_store(store_resource(Settings(_env_file=None)))  # type: ignore[call-arg]
    client = store._make_client()  # type: ignore[attr-defined]
    try:
        assert client.options.retry_writes is False
        context = client.options.pool_options._ssl_context
        assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
        subjects = [dict(item[0] for item in ca["subject"]) for ca in context.get_ca_certs()]
        assert {"commonName": ca_subject} in subjects
    finally:
        client.close()


def _ecs_api_calls() -> set[str]:
    """The ECS API operations the installed EcsRunLauncher calls, as IAM actions."""
    import dagster_aws.ecs

    source = "".join(
        (Path(dagster_aws.ecs.__file__).parent / name).read_text()
        for name in ("launcher.py", "tasks.py", "utils.py")
    )
    methods = set(re.findall(r"\becs\.([a-z_]+)\(", source))
    return {"ecs:" + "".join(part.title() for part in method.split("_")) for method in methods}


def test_task_role_allows_what_the_run_launcher_calls() -> None:
    calls = _ecs_api_calls()
    assert {"ecs:RunTask", "ecs:RegisterTaskDefinition", "ecs:DescribeTasks"} <= calls
    # Besides ECS: the daemon's network interface (ec2.NetworkInterface), a failed task's logs, and the
    # tags a run's task gets (RunTask with tags needs ecs:TagResource).
    for action in sorted(calls | {"ec2:DescribeNetworkInterfaces", "logs:GetLogEvents", "ecs:TagResource"}):
        assert _allowed(TASK_ROLE_POLICY, action, "*"), action
    for task in TASK_DEFINITIONS.values():
        for role in (task["taskRoleArn"], task["executionRoleArn"]):
            assert _allowed(TASK_ROLE_POLICY, "iam:PassRole", role), role


S3_ACTIONS = {
    "list_objects_v2": {"bucket": "s3:ListBucket"},
    "get_paginator": {"bucket": "s3:ListBucket"},
    "get_object": {"object": "s3:GetObject"},
    "head_object": {"object": "s3:GetObject"},
    "download_file": {"object": "s3:GetObject"},
    "put_object": {"object": "s3:PutObject"},
    "copy_object": {"object": "s3:PutObject"},
    "copy": {"object": "s3:PutObject"},
    "create_multipart_upload": {"object": "s3:PutObject"},
    "upload_part": {"object": "s3:PutObject"},
    "complete_multipart_upload": {"object": "s3:PutObject"},
    "abort_multipart_upload": {"object": "s3:AbortMultipartUpload"},
    "delete_object": {"object": "s3:DeleteObject"},
    "delete_objects": {"object": "s3:DeleteObject"},
}
"""The S3 client methods the package calls, and the IAM action each needs (on the bucket or its objects)."""


def test_task_role_allows_what_the_package_does_in_s3() -> None:
    source = "".join(path.read_text() for path in sorted((REPO_ROOT / "analysis_wrapper").rglob("*.py")))
    called = set(re.findall(r"\bclient\.([a-z_0-9]+)\(", source)) | set(
        re.findall(r"\bs3\.([a-z_0-9]+)\(", source)
    )
    s3_methods = {
        method for method in called if method in S3_ACTIONS or "object" in method or "upload" in method
    }
    unmapped = s3_methods - set(S3_ACTIONS)
    assert not unmapped, f"map these S3 calls to IAM actions in S3_ACTIONS: {sorted(unmapped)}"

    env = _task_environment("daemon")
    buckets = {
        env["ANALYSIS_BUCKET"].split("/")[0],
        env["DISPATCH_INBOX"].removeprefix("s3://").split("/")[0],
        env["DAGSTER_COMPUTE_LOG_BUCKET"],
    }
    for bucket in sorted(buckets):
        for method in sorted(s3_methods | {"put_object", "get_object", "list_objects_v2"}):
            for target, action in S3_ACTIONS[method].items():
                arn = f"arn:aws:s3:::{bucket}" + ("/some/key" if target == "object" else "")
                assert _allowed(TASK_ROLE_POLICY, action, arn), (method, action, arn)


def test_execution_role_reads_every_secret_the_tasks_name() -> None:
    for task in TASK_DEFINITIONS:
        for name, source in _task_secrets(task).items():
            assert _allowed(EXECUTION_ROLE_POLICY, "secretsmanager:GetSecretValue", source + "-AbCdEf"), name
    for action in ("ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage", "logs:PutLogEvents"):
        assert _allowed(EXECUTION_ROLE_POLICY, action, "*"), action


# ---- Helm ------------------------------------------------------------------------------------------------
def _keys(names: str) -> set[str]:
    return set(names.split())


_POD_PARTS = _keys(
    "env envConfigMaps envSecrets deploymentLabels labels nodeSelector affinity tolerations"
    " podSecurityContext securityContext resources livenessProbe readinessProbe startupProbe annotations"
    " schedulerName volumeMounts volumes initContainerResources"
)
_PULL_POLICIES = _keys("Always IfNotPresent Never")
CHART_KEYS: dict[str, set[str]] = {
    "": _keys(
        "dagsterWebserver dagster-user-deployments postgresql generatePostgresqlPasswordSecret"
        " generateCeleryConfigSecret rabbitmq redis flower ingress imagePullSecrets computeLogManager"
        " scheduler runLauncher pythonLogs dagsterDaemon busybox migrate telemetry serviceAccount global"
        " retention additionalInstanceConfig"
    ),
    "global": _keys("postgresqlSecretName dagsterHome serviceAccountName celeryConfigSecretName"),
    "dagster-user-deployments": _keys("enabled enableSubchart imagePullSecrets deployments"),
    "dagster-user-deployments.deployments[]": _keys(
        "name image dagsterApiGrpcArgs codeServerArgs includeConfigInLaunchedRuns deploymentNamespace"
        " port env envConfigMaps envSecrets annotations nodeSelector affinity tolerations"
        " podSecurityContext securityContext resources livenessProbe readinessProbe startupProbe labels"
        " volumeMounts volumes schedulerName initContainers sidecarContainers"
    ),
    "dagster-user-deployments.deployments[].image": _keys("repository tag pullPolicy"),
    "dagster-user-deployments.deployments[].includeConfigInLaunchedRuns": _keys("enabled"),
    "postgresql": _keys(
        "image enabled postgresqlHost postgresqlUsername postgresqlPassword postgresqlDatabase"
        " postgresqlParams postgresqlScheme service"
    ),
    "postgresql.service": _keys("port"),
    "runLauncher": _keys("type config"),
    "runLauncher.config": _keys("celeryK8sRunLauncher k8sRunLauncher customRunLauncher"),
    "runLauncher.config.k8sRunLauncher": _keys(
        "image imagePullPolicy jobNamespace loadInclusterConfig kubeconfigFile envConfigMaps envSecrets"
        " envVars volumeMounts volumes labels failPodOnRunFailure resources schedulerName securityContext"
        " runK8sConfig"
    ),
    "dagsterWebserver": _POD_PARTS
    | _keys(
        "replicaCount image nameOverride pathPrefix service workspace enableReadOnly dbStatementTimeout"
        " dbPoolRecycle logLevel"
    ),
    "dagsterDaemon": _POD_PARTS
    | _keys("enabled image runCoordinator heartbeatTolerance runMonitoring runRetries sensors schedules"),
    "dagsterDaemon.runCoordinator": _keys("enabled type config"),
    "dagsterDaemon.runCoordinator.config": _keys("queuedRunCoordinator customRunCoordinator"),
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator": _keys(
        "maxConcurrentRuns tagConcurrencyLimits dequeueIntervalSeconds dequeueNumWorkers"
        " dequeueUseThreads blockOpConcurrencyLimitedRuns"
    ),
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits[]": _keys(
        "key value limit"
    ),
    # An object in the schema; these are the keys the chart's instance template reads.
    "dagsterDaemon.runMonitoring": _keys(
        "enabled startTimeoutSeconds cancelTimeoutSeconds maxResumeRunAttempts pollIntervalSeconds"
        " freeSlotsAfterRunEndSeconds"
    ),
    "dagsterDaemon.runRetries": _keys("enabled maxRetries"),
    "computeLogManager": _keys("type config"),
    "computeLogManager.config": _keys(
        "azureBlobComputeLogManager gcsComputeLogManager s3ComputeLogManager customComputeLogManager"
    ),
    "computeLogManager.config.s3ComputeLogManager": _keys(
        "bucket localDir prefix useSsl verify verifyCertPath endpointUrl skipEmptyFiles uploadInterval"
        " uploadExtraArgs showUrlOnly region"
    ),
    "telemetry": _keys("enabled"),
}
"""Keys of Dagster's Helm chart values schema for the objects our values set, by path, transcribed from the
chart's ``helm/dagster/values.schema.json`` in dagster-io/dagster (a 1.x chart: the 1.13.27 chart itself
cannot be fetched here). Below a key in FREE_FORM the chart takes Kubernetes objects or free values."""
FREE_FORM = _keys(
    "env envSecrets envConfigMaps volumes volumeMounts resources podSecurityContext securityContext"
    " postgresqlParams value dagsterApiGrpcArgs"
)
CHART_ENUMS = {
    "runLauncher.type": _keys("CeleryK8sRunLauncher K8sRunLauncher CustomRunLauncher"),
    "computeLogManager.type": _keys(
        "NoOpComputeLogManager AzureBlobComputeLogManager GCSComputeLogManager S3ComputeLogManager"
        " CustomComputeLogManager"
    ),
    "dagsterDaemon.runCoordinator.type": _keys("QueuedRunCoordinator CustomRunCoordinator"),
    "dagster-user-deployments.deployments[].image.pullPolicy": _PULL_POLICIES,
    "runLauncher.config.k8sRunLauncher.imagePullPolicy": _PULL_POLICIES,
}


def test_helm_values_use_only_keys_the_chart_has() -> None:
    def walk(value: Any, path: str) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item, path + "[]")
            return
        if path in CHART_ENUMS:
            assert value in CHART_ENUMS[path], (path, value)
        if not isinstance(value, dict):
            return
        assert path in CHART_KEYS, f"{path}: no key table of the chart's schema here; transcribe it"
        unknown = set(value) - CHART_KEYS[path]
        assert not unknown, f"{path or 'top level'}: not in the chart's values schema: {sorted(unknown)}"
        for key, child in value.items():
            if key not in FREE_FORM:
                walk(child, f"{path}.{key}" if path else key)

    walk(HELM, "")


def test_helm_code_location_serves_what_the_image_serves() -> None:
    (deployment,) = HELM_DEPLOYMENTS
    assert HELM["dagster-user-deployments"]["enabled"] and HELM["dagster-user-deployments"]["enableSubchart"]
    assert deployment["name"] == PYPROJECT["tool"]["dagster"]["code_location_name"].replace("_", "-")
    cmd = _docker_cmd()
    port = str(deployment["port"])
    # The chart runs `dagster api grpc -h 0.0.0.0 -p <port>` and then dagsterApiGrpcArgs.
    assert cmd[:3] == ["dagster", "api", "grpc"]
    assert cmd[cmd.index("-p") + 1] == port == _docker_args("EXPOSE")[0][0]
    pairs = list(zip(cmd[3::2], cmd[4::2], strict=True))
    assert ("-h", "0.0.0.0") in pairs
    assert deployment["dagsterApiGrpcArgs"] == [
        word for pair in pairs if pair[0] not in ("-h", "-p") for word in pair
    ]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert HELM["runLauncher"]["type"] == "K8sRunLauncher"
    assert deployment["podSecurityContext"]["runAsUser"] == 10001  # the image's user
    assert "analysis-wrapper" in deployment["image"]["repository"] and deployment["image"]["tag"]


def test_helm_settings_are_known_and_secrets_come_from_kubernetes_secrets() -> None:
    section = _deploy_section()
    created = set(re.findall(r"create secret generic ([\w.-]+)", section))
    for part in (*HELM_DEPLOYMENTS, HELM["dagsterWebserver"], HELM["dagsterDaemon"]):
        env = part.get("env", {})
        assert isinstance(env, dict)
        assert set(env) <= SETTINGS | AWS_SDK_VARIABLES, sorted(set(env) - SETTINGS - AWS_SDK_VARIABLES)
        assert not SECRET_NAMES & set(env), sorted(SECRET_NAMES & set(env))
        assert "GIT_COMMIT" not in env, "the commit comes from the image (build argument)"
        for value in env.values():
            assert isinstance(value, str), value  # ConfigMap data: strings only
            assert not re.search(r"://[^/?#]*@", value), f"credentials in a plain value: {value}"
        for secret in part.get("envSecrets", []):
            assert secret["name"] in created, f"the Deploy section never creates the Secret {secret['name']}"
    assert HELM["generatePostgresqlPasswordSecret"] is False and HELM["postgresql"]["enabled"] is False
    assert "postgresqlPassword" not in HELM["postgresql"]
    assert HELM["global"]["postgresqlSecretName"] in created
    assert re.search(r'--from-literal=DOCDB_URI="\$DOCDB_URI"', section), "DOCDB_URI from the environment"


def test_helm_mounts_the_ca_bundle_where_the_settings_look() -> None:
    (deployment,) = HELM_DEPLOYMENTS
    ca_file = Path(deployment["env"]["DOCDB_TLS_CA_FILE"])
    assert deployment["env"]["DOCDB_TLS"] == "1"
    mounts = {
        m["name"]: Path(m["mountPath"])
        for m in deployment["volumeMounts"]
        if ca_file.parent == Path(m["mountPath"])
    }
    assert mounts, f"no volume is mounted at {ca_file.parent}"
    (volume,) = [v for v in deployment["volumes"] if v["name"] in mounts]
    config_map = volume["configMap"]["name"]
    assert re.search(rf"create configmap {config_map} --from-file={ca_file.name}=", _deploy_section())
    # The same path the ECS tasks use and the image bakes from deploy/certs/.
    assert _task_environment("code-location")["DOCDB_TLS_CA_FILE"] == str(ca_file)
    assert (["deploy/certs/"], str(ca_file.parent) + "/") in _docker_copies()


# ---- Dockerfile ------------------------------------------------------------------------------------------
def _pip_installs() -> list[list[str]]:
    installs = []
    for args in _docker_args("RUN"):
        for command in " ".join(args).split("&&"):
            words = command.split()
            for i, word in enumerate(words[:-1]):
                if word.endswith("pip") and words[i + 1] == "install":  # pip / python -m pip
                    installs.append([w for w in words[i + 2 :] if not w.startswith("-")])
    return installs


def test_dockerfile_installs_the_package_as_setup_sh_does() -> None:
    assert _pip_installs() == [["."]], "one install step: `pip install .` (pyproject.toml, no extras)"
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    runtime = setup[setup.index("else\n") : setup.index("fi\n", setup.index("else\n"))]
    assert re.search(r"pip\" install -q -e \.\s*$", runtime.strip()), (
        "setup.sh's runtime branch: `pip install -e .`"
    )
    (base,) = _docker_args("FROM")
    assert base == ["python:3.11-slim"]
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains("3.11")


def test_dockerfile_copies_what_the_build_needs_and_nothing_ignored() -> None:
    sources = {source.rstrip("/") for sources, _ in _docker_copies() for source in sources}
    package_dirs = {
        pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} | package_dirs <= sources
    for source in sorted(sources):
        assert (REPO_ROOT / source).exists(), source
        assert not _dockerignored(source), f".dockerignore keeps {source} out of the build"


def test_dockerfile_sets_only_known_settings_and_runs_unprivileged() -> None:
    env = _docker_env()
    python_runtime = {"PYTHONUNBUFFERED"}
    assert set(env) <= SETTINGS | python_runtime, sorted(set(env) - SETTINGS - python_runtime)
    assert env["GIT_COMMIT"] == "${GIT_COMMIT}", "GIT_COMMIT comes from the build argument"
    assert any(args[0].split("=")[0] == "GIT_COMMIT" for args in _docker_args("ARG"))
    assert env["DAGSTER_HOME"].startswith("/opt/dagster/")
    (user,) = _docker_args("USER")
    assert user[0] not in ("root", "0")
    assert _docker_args("EXPOSE") == [["4000"]]
    assert _docker_cmd() == [
        "dagster",
        "api",
        "grpc",
        "-m",
        PYPROJECT["tool"]["dagster"]["module_name"],
        "-h",
        "0.0.0.0",
        "-p",
        "4000",
    ]


def test_dockerignore_keeps_secrets_and_bulk_out() -> None:
    kept_out = (
        ".git .venv settings.env .env sub/dir/.env .dagster_home analysis_results analysis_results_dry_run"
        " dispatch_inbox examples/data analysis_wrapper/__pycache__ .pytest_cache analysis_wrapper_tests"
    )
    for path in kept_out.split():
        assert _dockerignored(path), f".dockerignore lets {path} into the build context"


def test_pyproject_declares_every_library_the_deploy_configs_load() -> None:
    """The image installs exactly pyproject.toml's dependencies, so each library a shipped config loads must
    be one of them, pinned with the dagster set (every 0.29.27 library requires exactly dagster 1.13.27)."""
    modules = set()
    for config_dir in SHIPPED_INSTANCE_CONFIGS:
        raw = yaml.safe_load((config_dir / "dagster.yaml").read_text())
        modules |= {part["module"] for part in raw.values() if isinstance(part, dict) and "module" in part}
        if "postgres" in (raw.get("storage") or {}):
            modules.add("dagster_postgres")
    if HELM["runLauncher"]["type"] == "K8sRunLauncher":
        modules.add("dagster_k8s")  # a user-code image run by the K8sRunLauncher imports it
    libraries = {module.split(".")[0].replace("_", "-") for module in modules} - {"dagster"}
    pins = dict(
        re.match(r"([\w.-]+)\s*==\s*([\w.]+)", dep).groups()
        for dep in PYPROJECT["project"]["dependencies"]
        if "==" in dep
    )  # type: ignore[union-attr]
    missing = {lib for lib in libraries if lib not in pins}
    assert not missing, "add to pyproject.toml's dependencies: " + ", ".join(
        f"{lib}=={pins['dagster-aws']}" for lib in sorted(missing)
    )
    assert {pins[lib] for lib in libraries} == {pins["dagster-aws"]}


@pytest.mark.slow
def test_the_image_install_step_runs_here(tmp_path: Path) -> None:
    """The Dockerfile's install step on exactly what it copies: the wheel builds, holds the package and
    its analyses, and pip resolves its dependencies (from the environment CI set up, else the index)."""
    context = tmp_path / "context"
    for sources, destination in _docker_copies():
        if not destination.startswith("./"):
            continue  # only what is copied into the install step's working folder
        for source in sources:
            target = (
                context / destination / Path(source).name
                if destination.endswith("/")
                else context / destination
            )
            if (REPO_ROOT / source).is_dir():
                shutil.copytree(REPO_ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO_ROOT / source, target)
    assert (context / "pyproject.toml").exists() and (context / "analysis_wrapper").is_dir()

    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(context)], check=True, timeout=300
    )
    (wheel,) = wheels.glob("analysis_wrapper-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"analysis_wrapper/definitions.py", "analysis_wrapper/analyses/isi_violations.py"} <= names
    assert not any(name.startswith("analysis_wrapper_tests/") for name in names)

    report = tmp_path / "report.json"
    subprocess.run(
        [*pip, "install", "--dry-run", "-q", "--report", str(report), str(context)], check=True, timeout=600
    )
    installs = {
        item["metadata"]["name"].replace("_", "-").lower()
        for item in json.loads(report.read_text())["install"]
    }
    assert "analysis-wrapper" in installs
