"""Small helpers shared by every package: commands, files, logging."""
