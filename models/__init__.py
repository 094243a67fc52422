"""The records and the pure domain core: `(state, input, config) -> (state, events)`.

Where `make` could compile the core (models/compiled.py), the build in `.compiled/` is
loaded ahead of these sources, as long as it was built from them.
"""

from models import compiled as _compiled

#: Whether the core runs compiled (models/compiled.py) in this process.
COMPILED = _compiled.use(__path__)
