"""Running machines: the nspawn backend (nspawn.py), cgroups (cgroups.py) and the console keeper (console.py)."""
