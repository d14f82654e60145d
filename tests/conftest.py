"""Shared fixtures. Vendor parity tests take the `vendor` fixture: they skip when the extra is missing,
unless SAM3LITE_REQUIRE_VENDOR=1 (CI), where a missing vendor package fails the run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import vendor_harness  # noqa: E402  (test helper beside this file)


@pytest.fixture(scope="session")
def vendor():
    """The patched upstream `sam3` module."""
    try:
        return vendor_harness.import_vendor()
    except vendor_harness.VendorUnavailable as exc:
        if vendor_harness.vendor_required():
            pytest.fail(f"{vendor_harness.REQUIRE_ENV} is set but {exc}", pytrace=False)
        pytest.skip(str(exc))


def pytest_collection_modifyitems(config, items):
    # A test that uses the vendor fixture is a vendor test, so `-m vendor` selects it even when unmarked.
    for item in items:
        if "vendor" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vendor)
