"""Experiments of more than one run: the grid of a sweep (:mod:`.grid`: ``--set`` lists x
seeds, run names, the manifest) and running or submitting it (:mod:`.sweep`)."""
