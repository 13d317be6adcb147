"""Number formats: the grids a weight group is rounded onto."""
