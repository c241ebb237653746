"""`python -m img2img_lab ...` is the `img2img-lab` command (also under `accelerate launch -m`)."""

import sys

from .cli import main

sys.exit(main())
