"""A materialized Dagster instance, `dagster dev` on it and Chromium driving the UI.

Shared by the real-browser test (``test_ui_browser.py``) and ``scripts/screenshots.py`` (the README
screenshots). The site is a directory holding everything both processes must agree on:

    <site>/home/dagster.yaml   the repo's dagster.yaml (run-queue limits), the instance's event log
    <site>/pipeline.yaml       the regions (RS_EMBED_CONFIG)
    <site>/store/              the stores (RS_EMBED_STORE)
    <catalog>                  the synthetic STAC catalog (RS_EMBED_LOCAL_CATALOG)

The materialization runs in this process with the reduced fixture models against that instance;
`dagster dev` then loads the code location from ``workspace.yaml`` with the same environment
variables, so the UI shows those runs, the asset graph and its metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from rs_embed_pipeline_tests.pipeline.conftest import REPO, WINDOW, build_test_definitions

CHROMIUM = os.environ.get("RS_EMBED_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # Chromium refuses to start as root otherwise
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # No calls home to Google hosts (there is no network in CI anyway).
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1600, "height": 1000}


@dataclasses.dataclass(frozen=True)
class Site:
    root: Path
    home: Path
    config: Path
    store: Path
    catalog: Path
    region: str

    def env(self) -> dict[str, str]:
        """Environment of every process that must see this instance, store and config."""
        return {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "RS_EMBED_CONFIG": str(self.config),
            "RS_EMBED_STORE": str(self.store),
            "RS_EMBED_PROVIDER": "local_stac",
            "RS_EMBED_LOCAL_CATALOG": str(self.catalog),
        }


def prepare_site(root: Path, catalog: Path, worker_python: str, region: str = "tiny",
                 bbox: tuple[float, float, float, float] | None = None) -> tuple[Site, Any]:
    """A fresh instance at ``root/home`` (the repo's dagster.yaml), the region config and the
    Definitions (reduced fixture models) that :func:`materialize` runs; nothing is run yet."""
    root.mkdir(parents=True, exist_ok=True)
    home = root / "home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    if bbox is None and region != "tiny":
        raise ValueError("a region other than 'tiny' needs a bbox")
    regions = [{"name": region, "bbox": list(bbox)}] if bbox else None
    defs, store = build_test_definitions(root, catalog, worker_python, regions=regions)
    init_instance(home)
    site = Site(root=root, home=home, config=root / "pipeline.yaml", store=store, catalog=catalog, region=region)
    return site, defs


def init_instance(home: Path) -> None:
    """Create the instance's SQLite storages now, so that `dagster dev` and a run starting at the
    same time do not both create (and stamp the schema version of) the same database."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
        instance.get_latest_materialization_event(dg.AssetKey("tile_grid"))
        instance.all_instigator_state()


def materialize(site: Site, defs: Any, window: str = WINDOW) -> None:
    """Every asset of the site's region for ``window``, recorded in the site's instance."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(site.home)) as instance:
        result = defs.resolve_job_def("build_embeddings").execute_in_process(
            partition_key=dg.MultiPartitionKey({"region": site.region, "window": window}),
            instance=instance, raise_on_error=False,
        )
    if not result.success:
        failures = [e.message for e in result.all_events if e.is_failure]
        raise RuntimeError(f"materializing the UI site failed: {failures}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(base_url: str, query: str, variables: dict[str, Any] | None = None, timeout: float = 30) -> dict:
    req = urllib.request.Request(
        f"{base_url}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        payload = json.load(resp)
    if payload.get("errors"):
        raise RuntimeError(f"GraphQL errors: {payload['errors']}")
    return payload["data"]


LOCATION_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } ... on RepositoryLocation { name } } } } } }"""


LAUNCH_BACKFILL = """mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
    ... on InvalidSubsetError { message } ... on PartitionSetNotFoundError { message } } }"""
BACKFILL = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { id status isAssetBackfill numPartitions partitionNames
    runs(limit: 20) { id status tags { key value } } } } }"""


def launch_asset_backfill(base_url: str, assets: list[str], partitions: list[str], title: str = "") -> str:
    """What the UI's "Materialize" -> "Launch backfill" sends; returns the backfill id."""
    params = {"assetSelection": [{"path": [a]} for a in assets], "partitionNames": partitions,
              "fromFailure": False, "title": title or None}
    result = graphql(base_url, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"backfill not launched: {result}")
    return result["backfillId"]


def backfill_state(base_url: str, backfill_id: str) -> dict:
    state = graphql(base_url, BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
    for run in state.get("runs", []):
        run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
    return state


class DevServer:
    """A started `dagster dev`; :meth:`wait_ready` blocks until the code location is loaded."""

    def __init__(self, site: Site, proc: subprocess.Popen, url: str):
        self.site, self.proc, self.url = site, proc, url
        self._ready = False

    def wait_ready(self, timeout: float = 180) -> str:
        deadline, location = time.time() + timeout, None
        while not self._ready and time.time() < deadline and self.proc.poll() is None:
            try:
                entries = graphql(self.url, LOCATION_QUERY, timeout=5)["workspaceOrError"]["locationEntries"]
                location = entries[0]["locationOrLoadError"] if entries else None
                if location and location["__typename"] == "RepositoryLocation":
                    graphql(self.url, "mutation { setNuxSeen }")  # no "join the community" dialog
                    self._ready = True
                    break
                if location and location["__typename"] == "PythonError":
                    break
            except (OSError, KeyError, TypeError, RuntimeError):
                pass
            time.sleep(1)
        if not self._ready:
            raise RuntimeError(f"dagster dev did not load the code location: {location}; "
                               f"log: {(self.site.root / 'dagster_dev.log').read_text()[-3000:]}")
        return self.url


@contextlib.contextmanager
def dagster_dev(site: Site, port: int | None = None, wait: bool = True) -> Iterator[DevServer]:
    """`dagster dev` (webserver + daemon) on 127.0.0.1 over ``site``, its log in ``site.root``.

    It loads the code location from workspace.yaml with the site's RS_EMBED_* settings and runs in
    its own process group, which is terminated (then killed) on exit. ``wait=False`` returns at
    once, so that the caller can work while it starts (then call ``wait_ready()``).
    """
    port = port or free_port()
    dagster = Path(sys.executable).parent / "dagster"
    log = open(site.root / "dagster_dev.log", "wb")
    proc = subprocess.Popen(
        [str(dagster), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=site.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = DevServer(site, proc, f"http://127.0.0.1:{port}")
    try:
        if wait:
            server.wait_ready()
        yield server
    finally:
        stop_process_group(proc)
        log.close()


def stop_process_group(proc: subprocess.Popen, grace_s: float = 3) -> None:
    """SIGTERM the process group (webserver, daemon, code server, runs), SIGKILL what is left.

    `dagster dev` 1.13 does not finish its shutdown on SIGTERM or SIGINT here (it waits on its
    children), so the grace period is short; nothing is lost, the instance is on disk.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # children may outlive a finished parent
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# UI preferences the Dagster UI keeps in localStorage, set before each page loads: no "join the
# community" dialog, navigation collapsed, lineage drawn top to bottom (fits the groups best).
UI_PREFERENCES = {"communityNux": "1", "dagster-nav-collapsed": True, "asset-graph-direction": "vertical"}
GROUPS = ("inputs", "patches", "embeddings", "cubes", "products", "answers")
EDGES = "svg path[marker-end]"  # lineage edges: arrows between asset nodes


@contextlib.contextmanager
def chromium_page(viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A Playwright page in Debian's Chromium (no browser download at run time)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"Chromium not found at {CHROMIUM}; `make system-packages` installs it "
                           "(apt-get install chromium), or set RS_EMBED_CHROMIUM")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport or VIEWPORT)
            page.set_default_timeout(30_000)
            page.add_init_script("".join(
                f"window.localStorage.setItem({json.dumps(k)}, {json.dumps(json.dumps(v))});"
                for k, v in UI_PREFERENCES.items()))
            yield page
        finally:
            browser.close()


def open_lineage(page: Any, base_url: str, min_edges: int) -> None:
    """Global asset lineage with every group expanded; returns once ``min_edges`` edges are drawn."""
    expanded = ",".join(f"global@global:{g}" for g in GROUPS)
    page.goto(f"{base_url}/asset-groups?expanded={expanded}")
    # (The UI's Content-Security-Policy forbids page.wait_for_function's eval: wait on locators.)
    page.locator(EDGES).nth(min_edges - 1).wait_for(state="attached", timeout=60_000)
    # The explorer sidebar (not persisted) takes a third of the width: hide it, then make the graph
    # fit the wider canvas: the UI re-fits on a new layout, so collapse and re-expand all groups (⌥E).
    page.locator("button:has([aria-label='panel_show_right'])").first.click()
    page.keyboard.press("Alt+KeyE")
    page.wait_for_timeout(300)
    page.keyboard.press("Alt+KeyE")
    page.locator(EDGES).nth(min_edges - 1).wait_for(state="attached", timeout=30_000)
    wait_until_gone(page, page.get_by_text(re.compile(r"^Loading")))  # node statuses arrive
    page.wait_for_timeout(500)  # the zoom settles


def open_group_lineage(page: Any, base_url: str, group: str) -> None:
    """The lineage with only ``group`` expanded (the others are group nodes): few enough nodes that
    the fitted graph draws them in full, with kind tags and check summaries."""
    page.goto(f"{base_url}/asset-groups?expanded=global@global:{group}")
    page.locator("[class*=AssetNode_assetName]").first.wait_for(timeout=60_000)
    wait_until_gone(page, page.get_by_text(re.compile(r"^Loading")))
    page.wait_for_timeout(800)  # the zoom settles


def wait_until_gone(page: Any, locator: Any, timeout_s: float = 30) -> None:
    deadline = time.time() + timeout_s
    while locator.count() and time.time() < deadline:
        page.wait_for_timeout(200)
    if locator.count():
        raise TimeoutError(f"still shown after {timeout_s} s: {locator}")


def lineage_edge_count(page: Any) -> int:
    return page.locator(EDGES).count()


def open_latest_materialization(page: Any, base_url: str, asset: str) -> None:
    """The asset's Events view, which opens on its latest materialization and its metadata."""
    page.goto(f"{base_url}/assets/{asset}?view=events")
    page.get_by_text("Metadata", exact=True).wait_for()
    page.get_by_text("store_uri", exact=True).wait_for()


def open_markdown_entry(page: Any, key: str) -> Any:
    """Open a markdown metadata entry ("[Show Markdown]" in the row of ``key``); returns the dialog."""
    row = page.locator("tr", has=page.get_by_text(key, exact=True))
    row.get_by_text("[Show Markdown]").click()
    dialog = page.locator("[role=dialog]").filter(has_text=key)
    dialog.wait_for()
    return dialog
