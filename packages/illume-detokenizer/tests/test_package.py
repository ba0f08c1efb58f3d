from importlib import metadata

import illume_detokenizer


def test_imports_and_reports_its_installed_version():
    # The package has no models yet (see its README); it installs, imports and knows its version.
    assert illume_detokenizer.__version__ == metadata.version("illume-detokenizer")
