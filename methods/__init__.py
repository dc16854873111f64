"""Method plugins: each file registers classes in ``sambench.registry.METHODS``.

Loaded by ``sambench.registry.load_plugins`` as ``sambench_plugins.methods``; import shared
code from ``sambench``, never from this folder by a top-level name.
"""
