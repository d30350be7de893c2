"""``python -m napari_corrseg.cli``: the same as the ``napari-corrseg`` command."""

import sys

from . import main

sys.exit(main())
