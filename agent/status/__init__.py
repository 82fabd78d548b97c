"""The status document: its types (document), its one builder (builder), reading it back from a state
directory (view) and its text (text: `vehicle-agent status` and the progress line)."""
