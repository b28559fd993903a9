"""veneer: lightweight Linux system containers as overlay children of base images, run by systemd-nspawn.

This module is the library API: re-exports only, no side effects at import.
"""
