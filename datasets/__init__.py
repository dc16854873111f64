"""Dataset plugins: each file registers classes in ``sambench.registry.DATASETS``.

Loaded by ``sambench.registry.load_plugins`` as ``sambench_plugins.datasets`` so that this
folder never shadows Hugging Face's ``datasets`` package.
"""
