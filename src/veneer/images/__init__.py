"""Images: the store of layers and images (store.py), building root filesystems (bootstrap.py, distros/), and
the safe way files enter an image (transfer.py)."""
