"""``python -m tools.curate``: parse the recipe and flags, then run (see ``tools.curate``)."""

import logging

from tools.curate.recipe import CurateArguments
from tools.curate.run import main
from utils.train.args import parse_args

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (recipe,) = parse_args((CurateArguments,))
    main(recipe)
