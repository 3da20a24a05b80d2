from snirelay.cli import entry

entry()
