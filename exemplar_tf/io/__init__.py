"""Files the project writes: atomic replacement of shared files."""
