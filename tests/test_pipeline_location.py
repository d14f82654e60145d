"""The code location that workspace.yaml names loads with Dagster's own loader."""

from pathlib import Path

import dagster as dg
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_workspace_names_the_sam3lite_location():
    entry = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert entry == {"module_name": "sam3lite_pipeline.definitions", "attribute": "defs", "location_name": "sam3lite"}


def test_definitions_load():
    from sam3lite_pipeline.definitions import defs

    assert isinstance(defs, dg.Definitions)
    defs.get_repository_def()  # resolves the location the way the webserver does
