from ddray.cli import entry

entry()
