"""The records and the pure domain core: `(state, input, config) -> (state, events)`.

Importing it reads nothing and starts nothing; the compiled build of the core, where
`make` made one, is put ahead of these sources by `models.compiled.activate()`.
"""
