"""Rebasing a machine onto a newer revision of its image: compare child, old base and new base, then
keep, drop or merge each entry of the child's upper dir, with a backup that `--undo` restores."""
