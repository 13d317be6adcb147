"""Floor 1 of the house: how qrobust puts bytes on disk (one atomic writer) and the names of its own files."""
