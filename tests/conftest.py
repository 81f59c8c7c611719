import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def build_dir(tmp_path_factory):
    """Every test run writes models, results and figures into its own fresh build directory."""
    path = tmp_path_factory.mktemp("build")
    old = os.environ.get("DDSS_BUILD_DIR")
    os.environ["DDSS_BUILD_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DDSS_BUILD_DIR", None)
    else:
        os.environ["DDSS_BUILD_DIR"] = old
