"""``python -m onestep``: the command line.

``python -m`` (and ``torchrun -m``, ``accelerate launch -m``) put the working directory first on
``sys.path``, so a ``torch.py`` or ``diffusers.py`` lying there (say, in a downloaded teacher's
folder) would be imported in place of the library. onestep itself is already imported at this
point; the working directory is dropped before anything else is.
"""

import os
import sys

_cwd = os.path.realpath(os.getcwd())
sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.realpath(p) != _cwd]

from onestep.cli import main  # noqa: E402

sys.exit(main())
