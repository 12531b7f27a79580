"""The So3krates model and everything it needs: neighbour lists, bases, EFA, long-range terms, training."""
