"""The orchestrator reads the environment in one place, ``orchestration/settings.py``
(docs/architecture.md, "settings: the only reader of the environment"); everything else gets values
through settings and resources."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from types import SimpleNamespace

import rs_embed_pipeline
from rs_embed_pipeline.orchestration import settings as settings_module
from rs_embed_pipeline.orchestration.resources import TerraFMResource
from rs_embed_pipeline.orchestration.settings import REPO_DIR, environment_variables, worker_environment

PACKAGE = Path(rs_embed_pipeline.__file__).resolve().parent

# Files (relative to the package) that may read the process environment, and why.
ALLOWED_FILES = {
    "orchestration/settings.py": "the orchestrator's one reader of the environment (Settings.from_env, "
                                 "worker_environment)",
    "models/knobs.py": "the worker environment: rs-embed's knob variables and the Hugging Face cache, as "
                       "load_adapter(use_env=True) honours them for library users; the worker launched by "
                       "the pipeline gets use_env=False",
    "models/weights.py": "the worker environment: the Hugging Face cache and HF_HUB_OFFLINE, read where the "
                         "weights are fetched (in the worker process its launcher starts)",
    "models/options.py": "the worker environment: the Hugging Face cache variables (hf_cache_dir_from_env), "
                         "as models/knobs.py reads them",
}
# Folders whose every module may read it, and why.
ALLOWED_DIRS = {
    "cli/": "command-line entry points own their process: the demo sets the defaults of the variables that "
            "Settings.from_env then reads",
}

_ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def _environment_reads(path: Path) -> list[str]:
    """``line: code`` of each use of ``os.environ`` / ``os.getenv`` (and the other environment
    functions of ``os``), under any alias of ``os`` or imported from it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    os_names = {"os"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names |= {a.asname or a.name for a in node.names if a.name == "os"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"{node.lineno}: from os import {a.name}" for a in node.names if a.name in _ENV_NAMES]
        elif (isinstance(node, ast.Attribute) and node.attr in _ENV_NAMES
              and isinstance(node.value, ast.Name) and node.value.id in os_names):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def test_only_settings_the_cli_and_the_worker_side_read_the_environment():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ALLOWED_FILES or any(rel.startswith(d) for d in ALLOWED_DIRS):
            continue
        reads = _environment_reads(path)
        if reads:
            offenders[rel] = reads
    assert not offenders, (
        "read the variable in orchestration/settings.py and pass the value in (a resource field, an argument): "
        f"{offenders}")


def test_the_scan_sees_every_spelling(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\nimport os as o\nfrom os import getenv\n"
                      "a = os.environ.get('A')\nb = o.getenv('B')\nc = os.path.join('x')\n")
    assert _environment_reads(source) == ["3: from os import getenv", "4: os.environ", "5: o.getenv"]


def test_worker_environment_puts_the_checkout_first_on_the_workers_path(monkeypatch, tmp_path):
    """PYTHONPATH is read in settings.py when the worker is launched: from a source checkout the worker
    imports this tree first, then whatever the orchestrator's own PYTHONPATH holds."""
    assert (REPO_DIR / "pyproject.toml").exists()  # the tests run from a checkout
    assert worker_environment({}) == {"PYTHONPATH": str(REPO_DIR)}
    assert worker_environment({"PYTHONPATH": "/a:/b"}) == {"PYTHONPATH": os.pathsep.join([str(REPO_DIR), "/a:/b"])}
    monkeypatch.setenv("PYTHONPATH", "/from-the-process")
    assert worker_environment() == {"PYTHONPATH": os.pathsep.join([str(REPO_DIR), "/from-the-process"])}
    monkeypatch.delenv("PYTHONPATH")
    assert worker_environment() == {"PYTHONPATH": str(REPO_DIR)}
    # An installed package (its parent is site-packages, no pyproject.toml): nothing added.
    monkeypatch.setattr(settings_module, "REPO_DIR", tmp_path)
    assert worker_environment({"PYTHONPATH": "/a"}) == {}
    # The process's import path, not a setting a deployment forwards to runs.
    assert "PYTHONPATH" not in environment_variables()


def test_run_worker_launches_the_worker_with_the_settings_environment(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/from-the-process")
    calls = []

    class Pipes:
        def run(self, **kwargs):
            calls.append(kwargs)
            return SimpleNamespace(get_custom_messages=lambda: [])

    model = TerraFMResource(worker_python="/venv-worker/bin/python")
    report = model.run_worker(None, Pipes(), modality="s2", partitions=[])  # type: ignore[arg-type]
    assert report.results == () and report.failures == ()
    (call,) = calls
    assert call["command"] == ["/venv-worker/bin/python", "-m", "rs_embed_pipeline.worker.embed"]
    assert call["env"] == worker_environment() == {
        "PYTHONPATH": os.pathsep.join([str(REPO_DIR), "/from-the-process"])}
