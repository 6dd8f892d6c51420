"""The fork server's entry point, run as ``python -I <this file>`` with an empty environment (see ``server.py``).

``python -I`` puts no directory of the script on ``sys.path``, and btp_ray may not be importable by this interpreter
(or be another checkout of it), so this folder is loaded by path as the package ``_btp_forkserver``: its modules then
import one another relatively, under a name no program can mistake for a module of its own.
"""

import os
import sys

PACKAGE = "_btp_forkserver"


def _load_server():
    """The package's ``server`` module, with this folder loaded as :data:`PACKAGE`."""
    import importlib
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        PACKAGE, os.path.join(here, "__init__.py"), submodule_search_locations=[here]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.server")


if __name__ == "__main__":
    _load_server().main()
