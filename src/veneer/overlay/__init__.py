"""Overlay layers: the layer-chain model (layers.py), the mounts (mount.py) and their syscalls (idmap.py)."""
