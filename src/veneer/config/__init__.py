"""What the user asked for (settings), and where things live (layout)."""
