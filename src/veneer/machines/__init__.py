"""Machines: records (state.py), the lock and crash recovery (recovery.py), create/clone/rename/rm
(lifecycle.py), a foreground command (run.py), booting (boot.py), what run and boot share (launch.py), the
ephemeral sweep (sweep.py), rebase (rebase.py), being inside (inside.py), views (inspect.py, diff.py),
export (export.py) and boot-time units (units.py)."""
