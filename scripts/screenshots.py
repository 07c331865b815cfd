"""Regenerate the README's Dagster UI screenshots (``make screenshots``).

Materializes the ``demo`` region for 2024-Q1 (SYNTHETIC imagery, the reduced fixture models of
``../shared/reference``, so it takes about a minute on a laptop CPU) into a throw-away Dagster
instance, serves it with ``dagster dev`` and photographs it with Debian's Chromium, using the same
helpers as the browser test (``rs_embed_pipeline_tests/pipeline/ui_harness.py``):

    docs/screenshots/lineage.png          global asset lineage, every group expanded
    docs/screenshots/materialization.png  latest thor_s2_cube materialization, PCA preview open
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rs_embed_pipeline.cli.demo import CATALOG_PAD_M, DEMO_REGION, DEMO_WINDOW, DEMO_WINDOW_END  # noqa: E402
from rs_embed_pipeline.providers.local_catalogs.synthetic import generate_synthetic_catalog  # noqa: E402
from rs_embed_pipeline.core.regions import load_pipeline_config  # noqa: E402
from rs_embed_pipeline.orchestration.settings import DEFAULT_CONFIG  # noqa: E402
from rs_embed_pipeline_tests.pipeline import ui_harness as ui  # noqa: E402

LINEAGE_EDGES = 11
VIEWPORT = {"width": 1400, "height": 1200}
CUBE = "thor_s2_cube"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the instance, store and dagster dev log here (default: a temp dir)")
    args = parser.parse_args(argv)
    worker_python = os.environ.get("RS_EMBED_WORKER_PYTHON", str(REPO / ".venv-worker" / "bin" / "python"))
    bbox = load_pipeline_config(DEFAULT_CONFIG).region(DEMO_REGION).aoi.bounds

    with tempfile.TemporaryDirectory(prefix="rs-embed-screenshots-") as tmp:
        root = (args.workdir or Path(tmp)).resolve()
        print(f"Generating the synthetic catalog and materializing {DEMO_REGION}|{DEMO_WINDOW} in {root} ...")
        catalog = generate_synthetic_catalog(root / "catalog", bbox, DEMO_WINDOW, DEMO_WINDOW_END,
                                             seed=0, pad_m=CATALOG_PAD_M)
        site, defs = ui.prepare_site(root, catalog, worker_python, region=DEMO_REGION, bbox=bbox)
        with ui.dagster_dev(site, wait=False) as server:  # starts while the region materializes
            ui.materialize(site, defs, window=DEMO_WINDOW)
            url = server.wait_ready()
            args.out.mkdir(parents=True, exist_ok=True)
            with ui.chromium_page(VIEWPORT) as page:
                ui.open_lineage(page, url, LINEAGE_EDGES)
                page.screenshot(path=str(args.out / "lineage.png"))
                ui.open_latest_materialization(page, url, CUBE)
                ui.open_markdown_entry(page, "preview").locator("img").first.wait_for()
                page.wait_for_timeout(300)
                page.screenshot(path=str(args.out / "materialization.png"))
    for name in ("lineage.png", "materialization.png"):
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
