"""Pipeline stages: each runs one step of the method from plain arguments (gin binds them)."""
