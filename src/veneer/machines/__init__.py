"""Machines: records (state.py), create/clone/rename/rm/run (lifecycle.py), booting (boot.py), being inside
(inside.py), views (inspect.py, diff.py) and boot-time units (units.py)."""
