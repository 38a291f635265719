"""StateStore backends, one file each."""
