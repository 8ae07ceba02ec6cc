"""Everything here is the torch side: skipped in a runtime-only install, a failure under CI."""

from needs import require_torch_side

require_torch_side(module_level=True)
