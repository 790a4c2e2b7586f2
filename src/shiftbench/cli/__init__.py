"""Command-line interface: parses options and calls the library, nothing more."""
