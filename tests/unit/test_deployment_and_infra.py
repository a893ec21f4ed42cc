
import yaml

from flows.deployments import build_deployment
from tests.conftest import ROOT, make_project


def test_served_deployment_uses_the_params_schedule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params_file = make_project(tmp_path, prefect={"cron": "15 4 * * 2", "timezone": "Europe/Berlin"})
    deployment = build_deployment(params_file)
    assert deployment.name == "kontext-train-scheduled"
    schedule = deployment.schedules[0].schedule
    assert schedule.cron == "15 4 * * 2" and schedule.timezone == "Europe/Berlin"
    assert deployment.parameters == {"params_file": "params.yaml"}


def test_infra_files_parse_and_name_the_flow_entrypoint():
    compose = yaml.safe_load((ROOT / "infra/docker-compose.yml").read_text())
    assert {"prefect-server", "prefect-worker", "mlflow", "minio"} <= set(compose["services"])
    project = yaml.safe_load((ROOT / "infra/prefect.yaml").read_text())
    entrypoint = project["deployments"][0]["entrypoint"]
    module, func = entrypoint.split(":")
    assert (ROOT / module).exists() and f"def {func}(" in (ROOT / module).read_text()
    for config in (ROOT / "infra/accelerate").glob("*.yaml"):
        assert yaml.safe_load(config.read_text())["num_processes"] >= 1


def test_stage_tasks_retry_everything_but_config_errors():
    from prefect.states import Completed, Failed

    from kontext_core.config import ConfigError
    from tasks.stage_tasks import _retry_unless_config_error

    assert not _retry_unless_config_error(None, None, Failed(data=ConfigError("params: bad key")))
    assert _retry_unless_config_error(None, None, Failed(data=OSError("disk hiccup")))
    assert _retry_unless_config_error(None, None, Completed(data={"ok": 1}))


def test_reproduce_deployment_takes_the_model_uri_from_the_ui(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from flows.deployments import build_reproduce_deployment

    params_file = make_project(tmp_path)
    deployment = build_reproduce_deployment(params_file)
    assert deployment.name == "kontext-reproduce" and not deployment.schedules
    assert deployment.parameters == {"params_file": "params.yaml"}
    properties = deployment._parameter_openapi_schema.properties
    assert properties["model_uri"]["default"] == "models:/kontext-lora@champion"
    project = yaml.safe_load((ROOT / "infra/prefect.yaml").read_text())
    entries = {d["name"]: d for d in project["deployments"]}
    assert entries["kontext-reproduce"]["entrypoint"] == "flows/reproduce_flow.py:kontext_reproduce"


def test_prefect_yaml_runs_from_any_checkout_on_two_pools_with_a_data_trigger(tmp_path):
    from flows.data_watch import DATA_CHANGED_EVENT, project_resource_id
    from flows.deployments import build_deployment
    from flows.placement import GROUP_DEPLOYMENTS
    from kontext_core.config import load_params

    text = (ROOT / "infra/prefect.yaml").read_text()
    assert "/app" not in text.split("deployments:")[1] and "directory:" not in text
    project = yaml.safe_load(text)
    assert project["pull"] == [{"flows.deployments.enter_checkout": {}}]
    entries = {d["name"]: d for d in project["deployments"]}
    for entry in entries.values():
        module, func = entry["entrypoint"].split(":")
        assert (ROOT / module).exists() and f"def {func}(" in (ROOT / module).read_text()
    assert {e["work_pool"]["name"] for e in entries.values()} == {"kontext-cpu", "kontext-gpu"}
    assert entries[GROUP_DEPLOYMENTS["data"]]["work_pool"]["name"] == "kontext-cpu"
    assert entries[GROUP_DEPLOYMENTS["gpu"]]["work_pool"]["name"] == "kontext-gpu"
    assert all(entry["concurrency_limit"] == 1 for entry in entries.values())
    trigger = entries["kontext-train-scheduled"]["triggers"][0]
    params = load_params(make_project(tmp_path))
    assert trigger["expect"] == [DATA_CHANGED_EVENT]
    assert trigger["match"] == {"prefect.resource.id": project_resource_id(params)}
    served = build_deployment(tmp_path / "params.yaml")
    assert served.triggers[0].expect == {DATA_CHANGED_EVENT}
    assert served.concurrency_limit == 1
