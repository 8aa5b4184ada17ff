"""``python -m efl.data.synthetic``: generate (or reuse) the dataset, print its summary."""

from . import main

main()
