"""The Dagster UI in a real browser: lineage, materialization metadata, checks and a backfill.

One module-scoped site: the tiny region materialized (reduced fixture models) into a fresh instance,
`dagster dev` serving that instance and the code location from workspace.yaml with the same
RS_EMBED_* settings, and Debian's Chromium driven by Playwright. Screenshots are saved under the
test's tmp directory (printed at the end); ``make screenshots`` makes the README's from the same
helpers. The server starts, and the backfill is launched, while the region materializes, so that
the whole module takes about a minute and a half on two cores.
"""

import io
import re
import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest

from rs_embed_pipeline_tests.pipeline.conftest import WINDOW
from rs_embed_pipeline_tests.pipeline.test_definitions import EXPECTED_ASSETS
from rs_embed_pipeline_tests.pipeline.ui_harness import (
    backfill_state,
    chromium_page,
    dagster_dev,
    graphql,
    launch_asset_backfill,
    lineage_edge_count,
    materialize,
    open_latest_materialization,
    open_group_lineage,
    open_lineage,
    open_markdown_entry,
    prepare_site,
)

pytestmark = pytest.mark.browser

# tile_grid -> 2 patches, s2 -> 2 embeddings, s1 -> 1, 3 embeddings -> cubes, tile_grid -> 3 cubes
EXPECTED_EDGES = 11
CHECKED_ASSETS = 8  # both patches, three embeddings, three cubes
GROUPS_SHOWN = ("inputs", "patches", "embeddings", "cubes", "products", "answers")
KINDS = ("parquet", "zarr", "stac", "pytorch", "xarray")
BACKFILL_WINDOWS = ("2024-07-01", "2024-10-01")
VIEWPORT = {"width": 1400, "height": 1200}


@pytest.fixture(scope="module")
def ui(tmp_path_factory, synthetic_catalog, worker_python):
    root = tmp_path_factory.mktemp("ui")
    site, defs = prepare_site(root, synthetic_catalog, worker_python)
    shots = root / "screenshots"
    shots.mkdir()
    with dagster_dev(site, wait=False) as server, ThreadPoolExecutor(1) as pool:
        # While the server starts and the tiny region materializes, launch the backfill as the UI's
        # "Launch backfill" does (2 windows x 1 region) as soon as the server answers: the backfill
        # daemon picks it up on its next tick (every 30 s) and its run executes meanwhile.
        backfill = pool.submit(lambda: launch_asset_backfill(
            server.wait_ready(), ["tile_grid"], [f"{site.region}|{w}" for w in BACKFILL_WINDOWS],
            title="ui test backfill"))
        materialize(site, defs)
        backfill_id = backfill.result()
        with chromium_page(VIEWPORT) as page:
            yield {"site": site, "url": server.url, "page": page, "shots": shots, "backfill_id": backfill_id}
    print(f"\nUI screenshots: {shots}")


def _visible_text(page, text: str, exact: bool = True) -> bool:
    locator = page.get_by_text(text, exact=exact)
    return locator.count() > 0 and locator.first.is_visible()


def _shows(label: str, name: str) -> bool:
    """A node label shows ``name`` in full, or middle-truncated as the fitted graph draws long names
    (``terraf…_embeddings``)."""
    if "…" not in label:
        return label == name
    head, tail = label.split("…", 1)
    return len(label) < len(name) and name.startswith(head) and name.endswith(tail)


def _assets_not_shown(page, names: list[str]) -> list[str]:
    """Names without a visible node of their own: each node label is used for at most one name."""
    labels = [el.inner_text().strip() for el in page.locator("[class*=AssetNode_assetName]").all() if el.is_visible()]
    missing = []
    for name in sorted(names, key=lambda n: sum(_shows(label, n) for label in labels)):  # fewest matches first
        match = next((label for label in labels if _shows(label, name)), None)
        if match is None:
            missing.append(name)
        else:
            labels.remove(match)
    return missing


def test_lineage_graph_shows_assets_edges_groups_kinds_and_checks(ui):
    page = ui["page"]
    open_lineage(page, ui["url"], EXPECTED_EDGES)
    page.screenshot(path=str(ui["shots"] / "lineage.png"))

    missing = _assets_not_shown(page, sorted(EXPECTED_ASSETS))
    assert not missing, f"asset nodes not shown: {missing}"
    assert lineage_edge_count(page) >= EXPECTED_EDGES
    for group in GROUPS_SHOWN:
        assert _visible_text(page, group), group
    # With all 24 assets the fitted graph draws minimal nodes (name only): kinds and check summaries
    # are read group by group, as a person zooms in.
    kinds_seen, check_summaries = set(), 0
    for group in ("inputs", "patches", "embeddings", "cubes"):
        open_group_lineage(page, ui["url"], group)
        kinds_seen |= {k for k in KINDS if page.get_by_text(re.compile(f"^{k}$", re.IGNORECASE)).count()}
        # Asset checks are summarized on each node that has them ("1 / 1 Passed", "2 / 2 Passed").
        check_summaries += page.get_by_text(re.compile(r"\d+ / \d+ Passed")).count()
    assert kinds_seen == set(KINDS)  # kind tags render with their display names (PyTorch, Parquet)
    assert check_summaries >= CHECKED_ASSETS


def test_cube_materialization_shows_metadata_table_paths_and_preview_picture(ui):
    page, site = ui["page"], ui["site"]
    open_latest_materialization(page, ui["url"], "thor_s2_cube")

    assert _visible_text(page, f"{site.region}|{WINDOW}", exact=False)
    for key in ("model_id", "weights_sha256", "tile_status", "tiles_ok", "coverage", "wall_seconds", "preview"):
        assert _visible_text(page, key), key
    # tile_status renders as a table, one row per partition of the run
    status = page.locator("table table, tr table").filter(has_text="no_data").first
    assert status.is_visible()
    assert all(status.get_by_text(c, exact=True).count() for c in ("ok", "no_data", "failed", "pending"))
    # store URI as a path
    assert _visible_text(page, str(site.store / "cubes" / "thor_1_0_base_s2" / f"{site.region}.zarr"))

    dialog = open_markdown_entry(page, "preview")
    img = dialog.locator("img").first
    img.wait_for()
    assert (img.get_attribute("src") or "").startswith("data:image/png;base64,")
    box = img.bounding_box()
    assert box and box["width"] >= 200 and box["height"] >= 100, box  # decoded, not a broken icon
    from PIL import Image

    pixels = Image.open(io.BytesIO(img.screenshot())).convert("RGB")
    flat = getattr(pixels, "get_flattened_data", pixels.getdata)  # getdata: deprecated in Pillow 12
    assert len(set(flat())) > 16, "the preview picture is blank"
    assert dialog.get_by_text("First three principal components", exact=False).is_visible()
    page.screenshot(path=str(ui["shots"] / "materialization.png"))
    page.keyboard.press("Escape")


def test_asset_pages_show_checks_owner_and_code_reference(ui):
    page, url = ui["page"], ui["url"]
    for asset, checks in (("thor_s2_cube", ("dims_and_crs", "coverage")),
                          ("thor_s2_embeddings", ("all_values_finite",))):
        page.goto(f"{url}/assets/{asset}?view=checks")
        for check in checks:
            page.get_by_text(check, exact=True).first.wait_for()
    page.goto(f"{url}/assets/thor_s2_cube")
    page.get_by_text("Source code", exact=True).wait_for()
    assert _visible_text(page, "embeddings.py")  # dg.with_source_code_references: file and line
    assert _visible_text(page, "Owners")
    assert _visible_text(page, "embeddings")  # team:embeddings
    assert _visible_text(page, "georeferenced Zarr", exact=False)  # the description


def test_backfill_of_two_windows_runs_batched_under_the_run_queue_limits(ui):
    url, site, backfill_id = ui["url"], ui["site"], ui["backfill_id"]
    queue = graphql(url, "{ instance { runQueuingSupported runQueueConfig { maxConcurrentRuns "
                         "tagConcurrencyLimitsYaml } } }")["instance"]
    assert queue["runQueuingSupported"]
    assert queue["runQueueConfig"]["maxConcurrentRuns"] == 8  # dagster.yaml
    assert re.search(r"key: dagster/backfill\s+limit: 4", queue["runQueueConfig"]["tagConcurrencyLimitsYaml"])

    deadline, state = time.time() + 150, {}
    while time.time() < deadline:
        state = backfill_state(url, backfill_id)
        runs = state["runs"]
        if runs and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
            break
        time.sleep(2)
    assert state["isAssetBackfill"] and state["numPartitions"] == 2, state
    # BackfillPolicy.multi_run(max_partitions_per_run=4) (partitions.BACKFILL_POLICY): both windows in one run,
    # tagged as a backfill run (so the dagster/backfill run-queue limit applies to it).
    assert len(state["runs"]) == 1, state
    run = state["runs"][0]
    assert run["status"] == "SUCCESS", f"{run}; see {site.root / 'dagster_dev.log'}"
    assert run["tags"]["dagster/backfill"] == backfill_id
    assert run["tags"]["dagster/asset_partition_range_start"] == f"{site.region}|{BACKFILL_WINDOWS[0]}"
    assert run["tags"]["dagster/asset_partition_range_end"] == f"{site.region}|{BACKFILL_WINDOWS[1]}"
    with dg.DagsterInstance.from_config(str(site.home)) as instance:
        done = instance.get_materialized_partitions(dg.AssetKey("tile_grid"))
    assert {f"{site.region}|{w}" for w in BACKFILL_WINDOWS} <= set(done)
    for w in BACKFILL_WINDOWS:
        assert (site.store / "tile_grid" / site.region / f"{w}.parquet").exists()
