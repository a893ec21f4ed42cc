"""A team's setup on one real S3 server (moto, loopback): aws datasets, an MLflow tracking server whose
artifacts live in a bucket, and a DVC remote in a bucket.

One `kontext run` (the whole flow, Prefect's ephemeral API) trains from `type: aws` edit, reference,
eval and degrade sets; the same images in local folders give the same pairs and the same adapter
bytes. The registered version loads from another directory with no S3 keys; no secret reaches a file
or the console; `dvc push`, a fresh clone and `dvc pull` leave a state where nothing re-runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kontext_core.fsutil import sha256_file
from kontext_core.stages import STAGE_ORDER
from tests.conftest import ROOT, fetched_records, make_project
from tests.s3.conftest import S3Server, free_port

pytestmark = [pytest.mark.slow, pytest.mark.s3]

BIN = Path(sys.executable).parent
DATA_BUCKET = "kontext-data"
MLFLOW_BUCKET = "kontext-mlflow"
DVC_BUCKET = "kontext-dvc"
# The demo's folder sets (pairs, eval pairs, sharp images for the deblur generator), by folder.
SETS = [
    ("pairs-edited", "pairs/edited", {"caption_strategy": "textfile", "conditioning_data": ["pairs-reference"]}),
    ("pairs-reference", "pairs/reference", {"conditioning_type": "reference_strict", "caption_strategy": None}),
    ("pairs-eval", "pairs-eval/edited", {"caption_strategy": "textfile", "conditioning_data": ["pairs-eval-ref"]}),
    ("pairs-eval-ref", "pairs-eval/reference", {"conditioning_type": "reference_strict", "caption_strategy": None}),
    ("sharp-images", "clean", {"caption_strategy": "textfile", "conditioning": [
        {"type": "superresolution", "blur_radius": 2.0, "blur_type": "gaussian", "add_noise": True,
         "noise_level": 0.02, "captions": ["deblur", "sharpen image"]}]}),
]


# Both projects: the demo's stages at test size, without the tiny model's pretraining (same in both).
SMALL = {
    "data_backend_config": "config/local.json",
    "eval_dataset_id": "pairs-eval",
    "tiny_model": {"seed": 0, "pretrain_vae_steps": 0, "pretrain_transformer_steps": 0},
}


def local_entries() -> list[dict]:
    return [{"id": i, "type": "local", "instance_data_dir": f"data/samples/{folder}", "resolution": 64, **extra}
            for i, folder, extra in SETS]


def aws_entries(server: S3Server) -> list[dict]:
    """SimpleTuner's aws keys: bucket, prefix and endpoint from the entry, and (here) its keys too."""
    return [
        {"id": i, "type": "aws", "aws_bucket_name": DATA_BUCKET, "aws_data_prefix": f"samples/{folder}",
         "aws_endpoint_url": server.endpoint, "aws_region_name": server.region,
         "aws_access_key_id": server.key_id, "aws_secret_access_key": server.secret,
         "resolution": 64, **extra}
        for i, folder, extra in SETS
    ]


def clean_env(project: Path) -> dict[str, str]:
    """A client's environment without any S3 key or endpoint (MLflow proxies the artifacts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_S3"))}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", PREFECT_HOME=str(project / ".prefect"), DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid")
    return env


def sh(cwd: Path, *cmd: str, env: dict[str, str], timeout: int = 900) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def mlflow_server(s3_server: S3Server, tmp_path_factory, mlflow_template):
    """`mlflow server` on loopback: SQLite store, artifacts proxied to s3://MLFLOW_BUCKET (only it has keys)."""
    s3_server.make_bucket(MLFLOW_BUCKET)
    where = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(mlflow_template, where / "mlflow.db")
    port = free_port()
    # Only the server holds S3 keys; its background job runner is not needed here.
    env = {**os.environ, **s3_server.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(where / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{where / 'mlflow.db'}",
         "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=where, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                tail = (where / "server.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server did not start: {tail}") from None
            time.sleep(0.5)
    yield url, where
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def team(s3_server: S3Server, mlflow_server, tmp_path_factory, mlflow_template):
    """The same datasets trained from local folders (stages in process) and from S3 (`kontext run`)."""
    url, _ = mlflow_server
    base = tmp_path_factory.mktemp("team")
    local = base / "local"
    shutil.copy(mlflow_template, base / "local.db")
    make_project(local, mlflow_db=base / "local.db", **SMALL)
    (local / "config" / "local.json").write_text(json.dumps(local_entries(), indent=1))
    # In a fresh process, like the aws half's `kontext run`: this test process's torch state (thread
    # count, set by earlier tests of a full session) must not decide the adapter's last bits.
    stages = STAGE_ORDER[: STAGE_ORDER.index("train") + 1]
    script = (
        "import sys\nfrom kontext_core.stages import run_stage\n"
        "for name in sys.argv[2:]:\n    run_stage(name, sys.argv[1])\n"
    )
    sh(local, sys.executable, "-c", script, str(local / "params.yaml"), *stages, env=dict(os.environ))

    s3_server.make_bucket(DATA_BUCKET)
    s3_server.upload_folder(local / "data" / "samples", DATA_BUCKET, "samples")

    project = base / "aws"
    make_project(project, **{**SMALL, "data_backend_config": "config/aws.json"}, mlflow={"tracking_uri": url})
    (project / "config" / "aws.json").write_text(json.dumps(aws_entries(s3_server), indent=1))
    # A git + DVC repository, as a team keeps it (the code deps in dvc.yaml live in the repo).
    shutil.copytree(ROOT / "kontext_core", project / "kontext_core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".gitignore", project / ".gitignore")
    env = clean_env(project)
    sh(project, str(BIN / "kontext"), "dvc-yaml", env=env)
    sh(project, "git", "init", "-q", env=env)
    sh(project, str(BIN / "dvc"), "init", "-q", env=env)
    # The remote is committed (bucket and endpoint only); keys come from the AWS chain of whoever pushes.
    sh(project, str(BIN / "dvc"), "remote", "add", "-d", "team", f"s3://{DVC_BUCKET}/store", env=env)
    sh(project, str(BIN / "dvc"), "remote", "modify", "team", "endpointurl", s3_server.endpoint, env=env)
    sh(project, "git", "add", "-A", env=env)
    sh(project, "git", "commit", "-qm", "project", env=env)
    console = sh(project, str(BIN / "kontext"), "run", env=env)
    return local, project, console


def _pairs(project: Path) -> list[dict]:
    """The pair table with bucket references as folder paths, and without the images' digests: an
    object's digest is its ETag and size, a file's its SHA-256 (each backend's content identity)."""
    text = (project / "data" / "pair" / "pairs.json").read_text()
    pairs = json.loads(text.replace(f"s3://{DATA_BUCKET}/samples/", "data/samples/"))
    for pair in pairs:
        pair.pop("digest")
        for ref in pair["references"]:
            ref.pop("digest", None)
            if ref["generated"]:
                ref["generated"].pop("source_digest")
    return pairs


def test_aws_sets_give_the_same_pairs_and_adapter_bytes_as_local_folders(team):
    local, project, console = team
    assert f"stages run: {', '.join(STAGE_ORDER)}" in console
    assert "registered model: models:/kontext-lora/1" in console
    # The stages ran at once on the flow's threads, in a fresh process, and none failed on its first
    # try (two stages importing diffusers at once failed there, and Prefect's retry hid it).
    assert "failed (attempt 1)" not in console
    assert _pairs(project) == _pairs(local)
    records = fetched_records(project)["records"]
    assert records["pairs-edited"][0]["image"].startswith(f"s3://{DATA_BUCKET}/samples/pairs/edited/")
    adapter = sorted((project / "models" / "adapter").glob("*.safetensors"))
    assert adapter and [sha256_file(p) for p in adapter] == [
        sha256_file(local / "models" / "adapter" / p.name) for p in adapter
    ]
    # Degrade read its sources from the bucket and made the same references.
    made = project / "data" / "degrade"
    degraded = sorted(p.relative_to(made) for p in made.rglob("*.png"))
    assert degraded and [sha256_file(project / "data" / "degrade" / p) for p in degraded] == [
        sha256_file(local / "data" / "degrade" / p) for p in degraded
    ]


def test_artifacts_land_in_the_bucket_and_the_champion_loads_without_s3_keys(team, s3_server, mlflow_server, tmp_path):
    _, project, _ = team
    url, _ = mlflow_server
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=MLFLOW_BUCKET).get("Contents", [])]
    assert any(k.endswith("pytorch_lora_weights.safetensors") for k in keys)
    assert any("validation" in k and k.endswith(".png") for k in keys)
    assert not (project / "mlruns").exists()  # nothing went to a file:// location in the project
    adapter = project / "models" / "adapter" / "pytorch_lora_weights.safetensors"
    # Another directory, another process, no AWS variables: the server proxies the bucket.
    script = (
        "import hashlib, json, mlflow, pathlib, sys\n"
        f"mlflow.set_tracking_uri({url!r})\n"
        "from mlflow.artifacts import download_artifacts\n"
        # The base model is recorded project-relative: the consumer names where its copy lives.
        f"config = {{'base_model_root': {str(project)!r}}}\n"
        "model = mlflow.pyfunc.load_model('models:/kontext-lora@champion', model_config=config)\n"
        "local = pathlib.Path(download_artifacts('models:/kontext-lora@champion', dst_path='dl'))\n"
        "found = sorted(local.rglob('pytorch_lora_weights.safetensors'))\n"
        "cfg = json.dumps(model.model_config['base_model'])\n"
        "print(json.dumps({'sha': hashlib.sha256(found[0].read_bytes()).hexdigest(), 'cfg': cfg}))\n"
    )
    # A consumer that cannot reach the bucket downloads through the server (kontext sets this itself).
    consumer = {**clean_env(tmp_path), "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}
    out = sh(tmp_path, sys.executable, "-c", script, env=consumer, timeout=300)
    answer = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert answer["sha"] == sha256_file(adapter)
    # The version names its base model portably (project-relative), never by this machine's path.
    assert "tiny-kontext" in answer["cfg"] and str(project) not in answer["cfg"]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_no_secret_in_mlflow_the_bucket_prefect_artifacts_or_the_console(team, s3_server, mlflow_server):
    _, project, console = team
    _, server_dir = mlflow_server
    secret = s3_server.secret.encode()
    assert secret not in console.encode()
    where = [*_files(project / ".prefect"), *_files(project / "artifacts"), *_files(project / "data"),
             *_files(project / "cache"), *_files(server_dir)]
    assert any(p.name == "mlflow.db" for p in where) and any(p.parent.name == "manifests" for p in where)
    leaked = [p for p in where if secret in p.read_bytes()]
    assert leaked == []
    client = s3_server.client()
    for obj in client.list_objects_v2(Bucket=MLFLOW_BUCKET).get("Contents", []):
        assert secret not in client.get_object(Bucket=MLFLOW_BUCKET, Key=obj["Key"])["Body"].read(), obj["Key"]


def test_dvc_push_then_pull_into_a_fresh_clone_is_up_to_date(team, s3_server, tmp_path):
    _, project, _ = team
    s3_server.make_bucket(DVC_BUCKET)
    keyed = {**clean_env(project), **{k: v for k, v in s3_server.env().items() if k.startswith("AWS_")}}
    sh(project, "git", "add", "-A", env=keyed)
    sh(project, "git", "commit", "-qm", "trained", env=keyed)
    sh(project, str(BIN / "dvc"), "push", env=keyed)
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(project), str(clone), env=keyed)
    keyed["PREFECT_HOME"] = str(clone / ".prefect")
    sh(clone, str(BIN / "dvc"), "pull", env=keyed)
    status = sh(clone, str(BIN / "dvc"), "status", env=keyed)
    assert "Data and pipelines are up to date." in status, status
    assert (clone / "artifacts" / "manifests" / "train.json").exists()
    again = sh(clone, str(BIN / "kontext"), "run", env=clean_env(clone))
    assert "stages run: none (all up to date)" in again
