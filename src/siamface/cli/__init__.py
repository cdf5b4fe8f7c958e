"""Command-line interface: ``siamface <command>``; one module per command."""
