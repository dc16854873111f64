"""sambench: one framework to train and evaluate SAM adaptation methods."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root: ``conf/``, ``methods/`` and ``datasets/`` live here.
REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "conf"

#: The plugin folders ``methods/`` and ``datasets/`` are imported as ``sambench_plugins.<folder>``.
PLUGIN_PACKAGE = "sambench_plugins"


def install_plugin_package(root: Path = REPO_ROOT) -> None:
    """Make ``sambench_plugins`` (the repository root's plugin folders) importable, importing
    nothing yet: ``from sambench_plugins.methods.ovsam.fpn import FPN`` works once ``sambench``
    is imported (a top-level ``datasets`` package is never put on ``sys.path``)."""
    import sys
    import types

    if PLUGIN_PACKAGE not in sys.modules:
        package = types.ModuleType(PLUGIN_PACKAGE)
        package.__path__ = [str(root)]
        sys.modules[PLUGIN_PACKAGE] = package


install_plugin_package()
