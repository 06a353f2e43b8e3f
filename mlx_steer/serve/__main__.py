"""``python -m mlx_steer.serve --model PATH ...`` = ``mlx-steer serve --model PATH ...``."""

import sys

from ..cli import main

raise SystemExit(main(["serve", *sys.argv[1:]]))
