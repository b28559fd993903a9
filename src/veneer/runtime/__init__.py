"""Running machines: the nspawn backend (nspawn.py), cgroups (cgroups.py), the console keeper
(console.py)."""
