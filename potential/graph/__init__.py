"""The graphs the model runs on: neighbour (pair) lists and their pair vectors (Å)."""
