from importlib import metadata

import illume_runtime


def test_imports_and_reports_its_installed_version():
    assert illume_runtime.__version__ == metadata.version("illume-runtime")
