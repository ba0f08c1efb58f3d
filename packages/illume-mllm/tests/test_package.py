from importlib import metadata

import illume_mllm


def test_imports_and_reports_its_installed_version():
    # The installed distribution and the import agree on the version (one source: __about__.py).
    assert illume_mllm.__version__ == metadata.version("illume-mllm")
