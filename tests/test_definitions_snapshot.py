"""The Dagster definitions as a committed snapshot (tests/snapshots/definitions.json): assets with their deps,
group, partitions, kinds and pools; asset checks with their blocking flag; jobs with the assets they select;
sensors and schedules with their job, interval or cron and default status; resources with their fields. A change
to the graph is then a visible diff in review.

The description is taken in a fresh interpreter without SAM3LITE_* variables, so it shows the defaults whatever
the shell running the tests sets. To accept an intended change:
    SAM3LITE_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_definitions_snapshot.py
and commit the rewritten file.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "snapshots" / "definitions.json"
UPDATE_ENV = "SAM3LITE_UPDATE_SNAPSHOTS"


def describe() -> dict[str, Any]:
    """A sorted, JSON-serialisable description of `sam3lite_pipeline.definitions.defs`."""
    from sam3lite_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    assets, checks = {}, {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "group": node.group_name,
            "partitions": node.partitions_def.name if node.partitions_def is not None else None,
            "kinds": sorted(node.kinds),
            "pools": sorted(node.pools),
        }
        for check_key in sorted(node.check_keys, key=lambda k: k.name):
            checks[f"{key.to_user_string()}:{check_key.name}"] = {"blocking": graph.get(check_key).blocking}
    jobs = {
        job.name: {"assets": sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)}
        for job in defs.resolve_all_job_defs()
        if not job.name.startswith("__")  # not Dagster's implicit job
    }
    sensors = {
        s.name: {
            "job": s.job_name,
            "minimum_interval_seconds": s.minimum_interval_seconds,
            "default_status": s.default_status.value,
        }
        for s in defs.sensors or []
    }
    schedules = {
        s.name: {
            "job": s.job_name,
            "cron_schedule": s.cron_schedule,
            "execution_timezone": s.execution_timezone,
            "default_status": s.default_status.value,
        }
        for s in defs.schedules or []
    }
    resources = {
        name: {"type": type(resource).__name__, "fields": sorted(type(resource).model_fields)}
        for name, resource in (defs.resources or {}).items()
    }
    return {
        "assets": assets,
        "asset_checks": checks,
        "jobs": jobs,
        "sensors": sensors,
        "schedules": schedules,
        "resources": dict(sorted(resources.items())),
    }


def _text(description: dict[str, Any]) -> str:
    return json.dumps(description, indent=2, sort_keys=True) + "\n"


def _described_with_defaults() -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM3LITE_")}
    script = "import runpy; runpy.run_path('tests/test_definitions_snapshot.py', run_name='__main__')"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_definitions_match_the_snapshot():
    now = _described_with_defaults()
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(now)
        return
    committed = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    if now != committed:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                now.splitlines(keepends=True),
                f"{SNAPSHOT.relative_to(ROOT)} (committed)",
                "the definitions now",
            )
        )
        raise AssertionError(
            f"the Dagster definitions differ from the committed snapshot:\n{diff}\n"
            f"If the change is intended, rewrite the snapshot with\n"
            f"  {UPDATE_ENV}=1 .venv/bin/python -m pytest {Path(__file__).relative_to(ROOT)}\n"
            f"and commit {SNAPSHOT.relative_to(ROOT)}."
        )


if __name__ == "__main__":
    sys.stdout.write(_text(describe()))
