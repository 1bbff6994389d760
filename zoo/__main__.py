"""``python -m zoo ...`` is ``metanet zoo ...`` (works without the metanet package)."""
import sys

from .cli import main

sys.exit(main())
