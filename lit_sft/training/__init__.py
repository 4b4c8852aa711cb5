"""How training runs: strategies (FSDP, FSDP2), atomic checkpoint writing, the data-parallel layout, and the
start-up checks."""
