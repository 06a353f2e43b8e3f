"""``python -m mlx_steer.cli ...`` = ``mlx-steer ...``."""

from .main import main

raise SystemExit(main())
