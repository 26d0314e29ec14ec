"""Secrets stay secret: the hub token never reaches logs, artifacts or metadata; nothing we store is a pickle."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from llm_lora.config import ModelConfig
from tests.conftest import free_loopback_port, run_tree, write_config

REPO = Path(__file__).resolve().parent.parent
ENV_TOKEN = "hf_envTOKENvalue0123456789abcdefXYZ"
SECRET_TOKEN = "hf_secretTOKENvalue9876543210zyxwvUTS"
CANARY = "canary-7f3a9c"  # put in the system prompt, which is stored on purpose

INSPECT = """
import json
from zenml.client import Client
run = Client().get_pipeline("finetune").last_run
materializers = sorted({
    artifact.materializer.import_path
    for step in run.steps.values() for artifacts in step.outputs.values() for artifact in artifacts
})
print(json.dumps({"status": str(run.status), "materializers": materializers,
                  "token_source": run.model_version.run_metadata.get("hub_token_source")}))
"""


def test_remote_code_is_off_unless_asked():
    assert ModelConfig(name="org/model").trust_remote_code is False


@pytest.mark.pipeline
def test_hub_token_never_stored_and_no_pickles(tmp_path, tiny_model_dir, support_rows):
    home = tmp_path / "zenml"
    env = dict(os.environ, ZENML_CONFIG_PATH=str(home / "config"), ZENML_LOCAL_STORES_PATH=str(home / "stores"),
               ZENML_ANALYTICS_OPT_IN="false", HF_TOKEN=ENV_TOKEN, COLUMNS="200")
    zenml = str(Path(sys.executable).parent / "zenml")
    created = subprocess.run([zenml, "secret", "create", "hf", f"--token={SECRET_TOKEN}"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stderr[-2000:]

    data = tmp_path / "data"
    data.mkdir()
    for split, count in (("train", 8), ("validation", 2), ("test", 2)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in support_rows[split][:count]))
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, training={"max_steps": 1, "batch_size": 2},
                          registry={"model_name": "secret-test"},
                          data={"system_prompt": f"Extract the fields as JSON ({CANARY})."})
    text = config.read_text().replace("model:\n", "model:\n  token_secret: hf\n", 1)
    config.write_text(text)
    result = run_tree([sys.executable, "run.py", "--config", str(config), "--debug"], cwd=REPO, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    script = tmp_path / "read_run.py"
    script.write_text(INSPECT)
    inspected = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True)
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    facts = json.loads(inspected.stdout.strip().splitlines()[-1])
    assert facts["status"] == "completed"
    # The token came from the ZenML secret, and only the secret's name is recorded.
    assert facts["token_source"] == "zenml secret 'hf'"
    # Everything the project stores has its own format: no cloudpickle fallback.
    assert facts["materializers"] and not [m for m in facts["materializers"] if "pickle" in m.lower()]

    # Scan: the run's output, every stored file (artifacts, logs), every database table but the secrets'.
    haystacks = {"run.py output": (result.stdout + result.stderr).encode()}
    databases = []
    for path in home.rglob("*"):
        if path.is_file():
            if path.suffix == ".db":
                databases.append(path)
            else:
                haystacks[str(path)] = path.read_bytes()
    assert databases and len(haystacks) > 10
    for database in databases:
        with sqlite3.connect(database) as connection:
            tables = [row[0] for row in connection.execute("select name from sqlite_master where type='table'")]
            for table in tables:
                if "secret" in table:
                    continue
                rows = connection.execute(f'select * from "{table}"').fetchall()
                haystacks[f"{database.name}:{table}"] = repr(rows).encode()
    for token in (ENV_TOKEN, SECRET_TOKEN):
        leaks = [where for where, content in haystacks.items() if token.encode() in content]
        assert not leaks, f"token found in {leaks}"
    # The scan does find what is stored: the system prompt's canary is in the database and the artifacts.
    found = [where for where, content in haystacks.items() if CANARY.encode() in content]
    assert any(".db:" in where for where in found) and any(".db:" not in where for where in found), found


@pytest.mark.pipeline
def test_local_dashboard_listens_on_loopback_only(tmp_path):
    import psutil

    env = dict(os.environ, ZENML_CONFIG_PATH=str(tmp_path / "config"), ZENML_ANALYTICS_OPT_IN="false")
    zenml = str(Path(sys.executable).parent / "zenml")
    port = str(free_loopback_port())  # not the default, so a user's own local server is left alone
    started = subprocess.run([zenml, "login", "--local", "--port", port], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        listening = [c.laddr.ip for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == int(port)]
        assert listening == ["127.0.0.1"], listening
    finally:
        subprocess.run([zenml, "logout", "--local"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
