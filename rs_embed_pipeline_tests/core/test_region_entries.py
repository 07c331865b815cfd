"""Region entries that look like mistakes are refused at load, naming the fix (issue 24): a bbox with
west and east swapped, longitudes outside [-180, 180], and the latitude message's wording."""

import pytest
import yaml

from rs_embed_pipeline.core.grid import bbox_aoi
from rs_embed_pipeline.core.regions import ConfigError, load_pipeline_config


def _config(tmp_path, region):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"time_windows": {"cadence": "quarterly", "start": "2024-01-01"},
                                    "regions": [{"name": "r", **region}]}))
    return path


def test_swapped_west_and_east_is_refused_naming_both_fixes(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(_config(tmp_path, {"bbox": [6.9, 46.2, 6.1, 46.55]}))
    assert str(err.value).endswith(
        "region 'r' has an invalid AOI: bbox west 6.9 > east 6.1: swap them ([6.1, 46.2, 6.9, 46.55]), or add "
        "crosses_antimeridian: true if the box crosses the anti-meridian")


def test_an_antimeridian_box_loads_when_the_entry_says_so(tmp_path):
    config = load_pipeline_config(_config(tmp_path, {"bbox": [179.9, -16.8, -179.9, -16.7],
                                                     "crosses_antimeridian": True}))
    aoi = config.region("r").aoi
    assert aoi.geom_type == "MultiPolygon" and aoi.equals(bbox_aoi(179.9, -16.8, -179.9, -16.7))
    assert aoi.bounds == (-180.0, -16.8, 180.0, -16.7)


@pytest.mark.parametrize(("region", "message"), [
    ({"bbox": [190, 46.5, 191, 46.6]}, r"bbox longitude\(s\) 190, 191 outside \[-180, 180\]"),
    ({"bbox": [-181, 46.5, -179, 46.6]}, r"bbox longitude\(s\) -181 outside \[-180, 180\]"),
    ({"bbox": [6.1, 46.2, 6.9, 46.55], "crosses_antimeridian": True},
     r"crosses_antimeridian: true needs west > east \(e.g. \[170, -20, -170, -10\]\), got west 6.1, east 6.9"),
    ({"bbox": [170, -20, -170, -10], "crosses_antimeridian": "yes"}, r"crosses_antimeridian must be true or false"),
    ({"geojson": "x.geojson", "crosses_antimeridian": True}, r"crosses_antimeridian applies to a bbox only"),
    ({"bbox": [6.1, 46.2, 6.9, 96]}, r"invalid AOI: bbox latitude out of range \[-90, 90\]: 46.2..96.0$"),
])
def test_out_of_range_and_inconsistent_boxes_are_refused(tmp_path, region, message):
    if "geojson" in region:
        (tmp_path / "x.geojson").write_text(
            '{"type": "Polygon", "coordinates": [[[6.6, 46.5], [6.7, 46.5], [6.7, 46.6], [6.6, 46.5]]]}')
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(_config(tmp_path, region))


def test_no_message_says_bbox_twice():
    for args in ((6.1, 46.2, 6.9, 96), (6.1, 83, 6.9, 85)):
        with pytest.raises(ValueError) as err:
            bbox_aoi(*args)
        assert "bbox bbox" not in str(err.value) and str(err.value).startswith("bbox latitude")
