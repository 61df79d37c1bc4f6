"""The command-line shell: parse arguments, call the engine, render results."""
